"""What a bulk job's driver is given (``Hooks``) and gives back (``Failure``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from engine._bulk.gate import Gate
from engine._net.ratelimit import Budget
from engine._net.transport import RequestOptions
from engine.config import TransferConfig
from engine.errors import TransferError
from engine.operation import DownloadOperation
from engine.values import BackgroundTransferStatus

S = BackgroundTransferStatus
_RESUMABLE = (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS)


class Failure(NamedTuple):
    """A file that failed: its result file, URL, error, and operation if it had one."""

    result_file: str
    requested_uri: str
    error: TransferError
    op: DownloadOperation | None

    @property
    def method(self) -> str:
        """The operation's method; "" for a small file, which kept no partial data."""
        return self.op.method if self.op is not None else ""


class Looked(Protocol):
    """What a look at the files in flight reads of each: a full operation, or a small
    file the gate holds (``Held``)."""

    @property
    def status(self) -> BackgroundTransferStatus: ...

    @property
    def result_file(self) -> Path: ...

    @property
    def space_needed(self) -> int:
        """Bytes it waits to have room for above the reserve (0: none known)."""


class Held(NamedTuple):
    """A small file the gate holds, as a look sees it."""

    status: BackgroundTransferStatus
    result_file: Path
    space_needed: int


class Hooks(NamedTuple):
    """What the driver needs from the downloader and the caller."""

    create: Callable[[str, str, Sequence[str]], DownloadOperation]
    config: TransferConfig
    headers: list[str]
    request: RequestOptions | None
    lean: bool
    """Whether small files may take the lean path at all (a plain GET downloader)."""
    budget: Budget | None = None
    """The job's part of the downloader's rate limit, which small files take from."""
    progress: Callable[[DownloadOperation], None] | None = None
    watch: Callable[[DownloadOperation], None] | None = None
    ended: Callable[[int, bool], None] | None = None
    """A lean file ended: its size, whether it completed (for a view: None when quiet)."""
    look: Callable[[Iterable[Looked]], None] | None = None
    """Called every ``look_every`` seconds with the full operations in flight and the
    small files that wait for the network or for room."""
    look_every: float = 2.0
    gate: Gate | None = None
    """The conditions small files wait for (network, its cost, free space); None: none."""


def go_on(op: DownloadOperation, progress: Any) -> None:
    """Let an operation found in the state directory continue, whatever it waits for."""
    if op.status is S.ERROR:
        op.resume()  # run again: try again from the bitmap
        op.attach(progress)
        return
    op.attach(progress)
    if op.status in _RESUMABLE:
        op.resume()
