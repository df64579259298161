"""The small value types of the API: enums, progress, ranges, response information, events.

They hold no engine state and do no I/O, so callers on any thread may keep them.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from engine.operation import DownloadOperation


class BackgroundTransferStatus(enum.Enum):
    """Where an operation is in its life (the seed's values, snake-cased)."""

    IDLE = 0
    RUNNING = 1
    PAUSED_BY_APPLICATION = 2
    PAUSED_COSTED_NETWORK = 3
    PAUSED_NO_NETWORK = 4
    COMPLETED = 5
    CANCELED = 6
    ERROR = 7
    PAUSED_RECOVERABLE_WEB_ERROR_STATUS = 8
    PAUSED_SYSTEM_POLICY = 32

    # Members are singletons compared by identity: hashed by identity too, in C.
    # (Enum's own __hash__ is a Python function, and the status table is looked up
    # by status a few times a file.)
    __hash__ = object.__hash__


class BackgroundTransferPriority(enum.Enum):
    """DEFAULT joins the end of the queue, HIGH goes near the front, LOW after the rest."""

    DEFAULT = 0
    HIGH = 1
    LOW = 2

    @property
    def rank(self) -> int:
        """Sort key: smaller runs first."""
        return {"HIGH": 0, "DEFAULT": 1, "LOW": 2}[self.name]


class BackgroundTransferCostPolicy(enum.Enum):
    DEFAULT = 0
    """Metered networks are allowed."""
    UNRESTRICTED_ONLY = 1
    """Never on a metered network: the operation waits in PAUSED_COSTED_NETWORK."""
    ALWAYS = 2


class BackgroundTransferBehavior(enum.Enum):
    PARALLEL = 0
    SERIALIZED = 1


@dataclasses.dataclass(frozen=True)
class BackgroundDownloadProgress:
    """One immutable progress snapshot; body bytes only, total 0 while unknown."""

    bytes_received: int
    total_bytes_to_receive: int
    status: BackgroundTransferStatus
    has_restarted: bool
    has_response_changed: bool


@dataclasses.dataclass(frozen=True)
class BackgroundTransferFileRange:
    offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class ResponseInformation:
    """The last response: the URI after redirects and the headers as the server sent them.

    ``status_code`` is the resource's status as Windows apps test it: 200 while it
    is served, even though every request bgtransfer sends asks for a range and is
    answered 206; the sample's ``IsFailed`` (``StatusCode != 200``) and code ported
    from it keep working.  The status line the server sent for the last request is
    ``wire_status_code``; for an error both are the error's (404).
    """

    actual_uri: str
    headers: Mapping[str, str]
    is_resumable: bool
    status_code: int
    wire_status_code: int = -1
    """The last response's own status (206 for a range); -1 when built without one:
    then the same as ``status_code``."""

    def __post_init__(self) -> None:
        if self.wire_status_code == -1:
            object.__setattr__(self, "wire_status_code", self.status_code)


@dataclasses.dataclass(frozen=True)
class Credential:
    """A user name and password for a server or a proxy; kept in memory only, never stored."""

    user: str
    password: str = dataclasses.field(repr=False)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.user, self.password)


class Deferral:
    """Holds back the next ``ranges_downloaded`` event until ``complete()`` is called.

    A context manager, as C#'s ``using (args.GetDeferral())``: ``with
    args.get_deferral():`` (or ``async with``) completes it when the block ends,
    however it ends."""

    def __init__(self, on_complete: Callable[[], None]) -> None:
        self._on_complete = on_complete
        self._done = False
        self._lock = threading.Lock()

    def complete(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._on_complete()

    def __enter__(self) -> Deferral:
        return self

    def __exit__(self, *exc: object) -> None:
        self.complete()

    async def __aenter__(self) -> Deferral:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.complete()


@dataclasses.dataclass
class BackgroundDownloadRangesDownloadedEventArgs:
    """What arrived since the previous event, merged and sorted."""

    added_ranges: list[BackgroundTransferFileRange]
    was_download_restarted: bool
    _make_deferral: Callable[[], Deferral] = dataclasses.field(repr=False)

    def get_deferral(self) -> Deferral:
        """Delay the next event until the returned deferral is completed."""
        return self._make_deferral()


A = TypeVar("A")

Handler = Callable[["DownloadOperation", A], "Awaitable[None] | None"]
"""An event handler: a plain function, or an ``async def`` (awaited by the engine)."""


class Event(Generic[A]):
    """``subscribe(handler) -> token`` / ``unsubscribe(token)``; handlers get ``(op, args)``.

    A handler may be an ``async def``: the event counts as handled when its coroutine
    returns (it holds the event as a deferral would), not when it first awaits."""

    def __init__(self) -> None:
        self._handlers: dict[int, Handler[A]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def subscribe(self, handler: Handler[A]) -> int:
        with self._lock:
            self._next += 1
            self._handlers[self._next] = handler
            return self._next

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._handlers.pop(token, None)

    def handlers(self) -> list[Handler[A]]:
        with self._lock:
            return list(self._handlers.values())

    def __bool__(self) -> bool:
        return bool(self._handlers)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort ``(offset, length)`` pairs and merge those that touch or overlap."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            out.append((off, length))
    return out


def subtract_ranges(
    new: list[tuple[int, int]], old: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """What ``new`` covers that ``old`` does not; both sorted and merged."""
    out: list[tuple[int, int]] = []
    j = 0
    for off, length in new:
        start, end = off, off + length
        while j < len(old) and old[j][0] + old[j][1] <= start:
            j += 1
        k = j
        while start < end and k < len(old) and old[k][0] < end:
            o_start, o_end = old[k][0], old[k][0] + old[k][1]
            if o_start > start:
                out.append((start, o_start - start))
            start = max(start, o_end)
            k += 1
        if start < end:
            out.append((start, end - start))
    return out
