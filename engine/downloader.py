"""BackgroundDownloader (the factory of operations), transfer groups and completion groups."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import stat
import threading
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

from engine._disk.core import SIDE_SUFFIXES
from engine._disk.trusted import check_folder
from engine._net.ratelimit import Budget
from engine._ops.reporting import run_handler
from engine._ops.validate import absolute, check_header, check_sources, check_uri, new_guid
from engine._runtime.conditions import LinuxNetworkMonitor, NetworkMonitor, free_bytes
from engine._runtime.loop import engine_loop
from engine._state.store import OpRecord, Store
from engine.config import Durability, TransferConfig
from engine.errors import InvalidRequestError, InvalidStateError, TransferError
from engine.operation import DownloadOperation
from engine.values import (
    BackgroundTransferBehavior,
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Credential,
)

if TYPE_CHECKING:
    import uuid

RequestBody = bytes | IO[bytes] | AsyncIterable[bytes]

_ERROR = BackgroundTransferStatus.ERROR
RANDOM_ACCESS_BLOCK = 1 << 16
_live_lock = threading.RLock()
_live: weakref.WeakValueDictionary[tuple[Path, str], DownloadOperation] = (
    weakref.WeakValueDictionary()
)
"""Operations this process holds, by (state dir, guid): one object per operation while
anyone holds it (a running one is held by its task), not every one a long-lived process
ever made."""


class EndedDownload(NamedTuple):
    """*Beyond*: what is remembered of an operation that completed or was canceled."""

    guid: uuid.UUID
    requested_uri: str
    result_file: Path
    status: BackgroundTransferStatus
    ended: float
    """When, in seconds since the epoch."""


class BackgroundTransferGroup:
    """A named group (persisted): PARALLEL members run together, SERIALIZED one at a time."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self._store = store

    @classmethod
    def create_group(
        cls, name: str, *, state_dir: os.PathLike[str] | str | None = None
    ) -> BackgroundTransferGroup:
        """The group called ``name`` (the existing one when it was created before)."""
        if not name:
            raise InvalidRequestError("a transfer group needs a name")
        store = Store.at(state_dir)
        store.group_behavior(name, None)
        return cls(name, store)

    @property
    def transfer_behavior(self) -> BackgroundTransferBehavior:
        return BackgroundTransferBehavior(self._store.group_behavior(self.name, None))

    @transfer_behavior.setter
    def transfer_behavior(self, value: BackgroundTransferBehavior) -> None:
        self._store.group_behavior(self.name, value.value)

    def _adopted_by(self, store: Store) -> BackgroundTransferGroup:
        """This group in another state directory (a downloader's own), with this
        group's behaviour: a SERIALIZED group made without ``state_dir`` stays
        SERIALIZED for a downloader that has one, instead of running PARALLEL there."""
        store.group_behavior(self.name, self.transfer_behavior.value)
        return BackgroundTransferGroup(self.name, store)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackgroundTransferGroup) and (self.name, self._store) == (
            other.name,
            other._store,
        )

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"BackgroundTransferGroup({self.name!r})"


class BackgroundTransferCompletionGroup:
    """Fires once when every operation created with it has ended (any way)."""

    def __init__(self) -> None:
        self._members: list[DownloadOperation] = []
        self._enabled = False
        self._fired = False
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[list[DownloadOperation]] = (
            concurrent.futures.Future()
        )

    def _add(self, op: DownloadOperation) -> None:
        with self._lock:
            if self._enabled:
                raise InvalidStateError("the completion group is enabled: no new members")
            self._members.append(op)

    def enable(self) -> None:
        """Call once, after creating every member."""
        with self._lock:
            if self._enabled:
                raise InvalidStateError("the completion group is already enabled")
            self._enabled = True
        self._check()

    def _check(self) -> None:
        ended = (
            BackgroundTransferStatus.COMPLETED,
            BackgroundTransferStatus.CANCELED,
            BackgroundTransferStatus.ERROR,
        )
        with self._lock:
            if not self._enabled or self._fired:
                return
            if not all(op.status in ended for op in self._members):
                return
            self._fired = True
        self._future.set_result(list(self._members))

    @property
    def is_enabled(self) -> bool:
        """Whether ``enable()`` was called (Windows' ``IsEnabled``)."""
        return self._enabled

    @property
    def trigger(self) -> BackgroundTransferCompletionGroupTrigger:
        """Windows hands this to ``BackgroundTaskBuilder.SetTrigger``; here
        ``trigger.register(task)`` runs ``task(details)`` when the group fires."""
        return BackgroundTransferCompletionGroupTrigger(self)

    @property
    def completed(self) -> asyncio.Future[list[DownloadOperation]]:
        """Awaitable: the member operations, once all have ended."""
        return asyncio.wrap_future(self._future)

    def on_completed(self, callback: Callable[[list[DownloadOperation]], None]) -> None:
        self._future.add_done_callback(lambda fut: callback(fut.result()))


@dataclasses.dataclass(frozen=True)
class BackgroundTransferCompletionGroupTriggerDetails:
    """What a completion group's task receives: every member, ended one way or another."""

    downloads: list[DownloadOperation]


class BackgroundTransferCompletionGroupTrigger:
    """The trigger of a completion group.  Windows starts a registered background task
    with it, even in a new process; Python has no such host, so the task runs in the
    process that holds the group, once, on the engine loop (an ``async def`` task is
    awaited there).  Registered after the group fired, it runs at once."""

    def __init__(self, group: BackgroundTransferCompletionGroup) -> None:
        self._group = group

    def register(
        self,
        task: Callable[[BackgroundTransferCompletionGroupTriggerDetails], Awaitable[None] | None],
    ) -> None:
        """Run ``task(details)`` when every member has ended (the group is enabled)."""

        def fired(fut: concurrent.futures.Future[list[DownloadOperation]]) -> None:
            details = BackgroundTransferCompletionGroupTriggerDetails(fut.result())
            engine_loop().loop.call_soon_threadsafe(lambda: run_handler(task(details)))

        self._group._future.add_done_callback(fired)


AUTO = 0
"""``max_connections`` stored for ``max_connections_per_file="auto"``."""


@dataclasses.dataclass
class Settings:
    """What a downloader's operations share: the store, the network view, secrets."""

    store: Store
    config: TransferConfig
    network_monitor: NetworkMonitor
    server_credential: Credential | None = None
    proxy_credential: Credential | None = None
    proxy: str | None = None
    completion_group: BackgroundTransferCompletionGroup | None = None
    free_space_reserve: int = -1
    budget: Budget = dataclasses.field(default_factory=Budget)
    """The downloader's total rate, shared by its operations' requests."""
    _free: dict[str, tuple[float, int | None]] = dataclasses.field(default_factory=dict, repr=False)
    _configs: dict[tuple[int, int], TransferConfig] = dataclasses.field(
        default_factory=dict, repr=False
    )
    _configs_of: TransferConfig | None = dataclasses.field(default=None, repr=False)
    """The ``config`` that ``_configs`` were derived from."""

    def __post_init__(self) -> None:
        if self.free_space_reserve < 0:
            self.free_space_reserve = self.config.free_space_reserve

    def config_for(self, rec: OpRecord) -> TransferConfig:
        """The operation's transfer settings.  Random access uses blocks of 64 KiB at most:
        a read waits for the whole block under its offset, and at 20 MB/s a 1 MiB block
        alone would take 50 ms."""
        block = min(rec.block_size, RANDOM_ACCESS_BLOCK) if rec.random_access else rec.block_size
        if self._configs_of is not self.config:  # not hashed: 30 fields for each file
            self._configs.clear()
            self._configs_of = self.config
        key = (rec.max_connections, block)
        config = self._configs.get(key)
        if config is None:
            if len(self._configs) > 64:
                self._configs.clear()
            auto = rec.max_connections == AUTO  # the cap of 64, the count adapts
            config = dataclasses.replace(
                self.config,
                connections=64 if auto else rec.max_connections,
                adaptive=auto,
                block_size=block,
            )
            self._configs[key] = config
        return config

    def disk_reserve_exceeded(self, result: str) -> bool:
        """Free space under the reserve.  Many operations start at once into one folder
        (a mirror): a statvfs younger than half a poll interval answers for all of them."""
        folder = os.path.dirname(result)  # strs: a Path's parent, or its str, cost a call
        now = time.monotonic()
        seen = self._free.get(folder)
        if seen is None or now - seen[0] > min(0.25, self.config.poll_interval / 2):
            try:
                seen = (now, free_bytes(Path(folder)))
            except OSError:
                return False  # the write itself will report what is wrong with the path
            if len(self._free) > 64:
                self._free.clear()
            self._free[folder] = seen
        free = seen[1]
        return free is not None and free < self.free_space_reserve

    def ended(self, op: DownloadOperation) -> None:
        """An operation reached COMPLETED, CANCELED or ERROR."""
        body = op.record.body_file
        if (
            body is not None
            and op.status is not _ERROR
            and Path(body).parent == self.store.state_dir / "bodies"
        ):
            Path(body).unlink(missing_ok=True)  # a body we kept only for re-sending
        if self.completion_group is not None:
            self.completion_group._check()


class BackgroundDownloader:
    """Creates operations; they inherit its settings.  See ../shared/API.md.

    ``service=True`` makes a downloader whose operations live in the background
    service (``engine.service.api``): they go on when this process is gone."""

    def __new__(cls, *args: Any, service: bool = False, **kwargs: Any) -> BackgroundDownloader:
        if service and cls is BackgroundDownloader:
            from engine.service.api import ServiceDownloader

            return super().__new__(ServiceDownloader)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        state_dir: os.PathLike[str] | str | None = None,
        transfer_group: BackgroundTransferGroup | None = None,
        method: str = "GET",
        priority: BackgroundTransferPriority = BackgroundTransferPriority.DEFAULT,
        cost_policy: BackgroundTransferCostPolicy = BackgroundTransferCostPolicy.DEFAULT,
        server_credential: Credential | None = None,
        proxy_credential: Credential | None = None,
        proxy: str | None = None,
        completion_group: BackgroundTransferCompletionGroup | None = None,
        max_connections_per_file: int | Literal["auto"] = "auto",
        block_size: int = 1 << 20,
        config: TransferConfig | None = None,
        network_monitor: NetworkMonitor | None = None,
        service: bool = False,
        durability: Durability | None = None,
        max_bytes_per_second: int = 0,
    ) -> None:
        if max_bytes_per_second < 0:
            raise InvalidRequestError("max_bytes_per_second must be 0 (no limit) or more")
        if max_connections_per_file != "auto" and not (
            isinstance(max_connections_per_file, int) and 1 <= max_connections_per_file <= 64
        ):
            raise InvalidRequestError("max_connections_per_file must be 'auto' or within 1..64")
        if block_size < 4096 or block_size & (block_size - 1):
            raise InvalidRequestError("block_size must be a power of two of 4096 or more")
        if not method or not method.isalpha():
            raise InvalidRequestError(f"invalid method {method!r}")
        config = config or TransferConfig()
        if durability is not None and durability != config.durability:
            config = dataclasses.replace(config, durability=durability)  # checks it
        self._store = Store.at(state_dir)
        if transfer_group is not None and transfer_group._store is not self._store:
            transfer_group = transfer_group._adopted_by(self._store)
        self.transfer_group = transfer_group
        self.method = method.upper()
        self.priority = priority
        self.cost_policy = cost_policy
        self.max_connections_per_file = max_connections_per_file
        self.block_size = block_size
        self._headers: list[tuple[str, str]] = []
        self._settings = Settings(
            self._store,
            config,
            network_monitor or LinuxNetworkMonitor(),
            server_credential,
            proxy_credential,
            proxy,
            completion_group,
            budget=Budget(max_bytes_per_second),
        )

    @property
    def state_dir(self) -> Path:
        return self._store.state_dir

    @property
    def completion_group(self) -> BackgroundTransferCompletionGroup | None:
        """The completion group its operations join (Windows' ``CompletionGroup``)."""
        return self._settings.completion_group

    @property
    def durability(self) -> Durability:
        """``"normal"`` (the default: the page cache, nothing waits for the disk) or
        ``"full"`` (each file on the disk before COMPLETED), for every operation this
        downloader runs, those it finds again too; see ``engine.Durability``."""
        return self._settings.config.durability

    @property
    def free_space_reserve(self) -> int:
        """Free bytes to keep on a result's file system; below, PAUSED_SYSTEM_POLICY."""
        return self._settings.free_space_reserve

    @free_space_reserve.setter
    def free_space_reserve(self, value: int) -> None:
        self._settings.free_space_reserve = max(0, value)

    @property
    def max_bytes_per_second(self) -> int:
        """*Beyond*: the most bytes a second all of this downloader's operations receive
        together (0: no limit); each operation's own limit applies within it."""
        return self._settings.budget.rate

    @max_bytes_per_second.setter
    def max_bytes_per_second(self, value: int) -> None:
        if value < 0:
            raise InvalidRequestError("max_bytes_per_second must be 0 (no limit) or more")
        self._settings.budget.rate = value

    def set_request_header(self, name: str, value: str) -> None:
        """A header every operation created afterwards sends (comma-joined when repeated)."""
        check_header(name, value)
        for i, (key, old) in enumerate(self._headers):
            if key.lower() == name.lower():
                self._headers[i] = (key, f"{old}, {value}")
                return
        self._headers.append((name, value))

    # -- creating --------------------------------------------------------------------
    def create_download(
        self,
        uri: str,
        result_file: os.PathLike[str] | str,
        request_body_file: os.PathLike[str] | str | None = None,
        *,
        sources: Sequence[str] = (),
    ) -> DownloadOperation:
        """A new operation in IDLE, persisted at once; refused when its file is taken.

        *Beyond*: ``sources`` are more URLs of the same content, fetched from together
        (see docs/sources.md)."""
        check_uri(uri)
        extra = check_sources(uri, sources)
        name = os.path.abspath(os.fspath(result_file))
        folder, leaf = os.path.split(name)
        if not leaf or _names_a_folder(folder, name):
            raise InvalidRequestError(f"{name}: the result must be a file path")
        if leaf.endswith(SIDE_SUFFIXES):
            raise InvalidRequestError(
                f"{name}: a name ending in {', '.join(SIDE_SUFFIXES)} is kept for "
                "bgtransfer's partial and control files"
            )
        check_folder(folder)
        body = str(absolute(request_body_file)) if request_body_file is not None else None
        if body is not None and not Path(body).is_file():
            raise InvalidRequestError(f"{body}: the request body file does not exist")
        method = "POST" if body is not None and self.method == "GET" else self.method
        rec = OpRecord(
            guid=new_guid(),
            seq=self._store.next_seq(),
            uri=uri,
            result_file=name,
            method=method,
            body_file=body,
            group_name=self.transfer_group.name if self.transfer_group else None,
            priority=self.priority.value,
            cost_policy=self.cost_policy.value,
            random_access=False,
            recoverable=[],
            headers=list(self._headers),
            max_connections=(
                AUTO if self.max_connections_per_file == "auto" else self.max_connections_per_file
            ),
            block_size=self.block_size,
            status=BackgroundTransferStatus.IDLE.value,
            sources=extra,
        )
        self._store.insert(rec)  # its unique index refuses a second live op on the file
        op = self._adopt(rec)
        op.made_here()
        if self._settings.completion_group is not None:
            self._settings.completion_group._add(op)
        return op

    async def create_download_async(
        self, uri: str, result_file: os.PathLike[str] | str, request_body_stream: RequestBody
    ) -> DownloadOperation:
        """create_download with a body from bytes, a binary file or an async iterable."""
        bodies = self.state_dir / "bodies"
        bodies.mkdir(mode=0o700, exist_ok=True)
        import tempfile  # here only: 3 ms of every command's start-up

        fd, name = tempfile.mkstemp(dir=bodies, prefix="body-")
        with os.fdopen(fd, "wb") as out:
            if isinstance(request_body_stream, (bytes, bytearray, memoryview)):
                out.write(request_body_stream)
            elif isinstance(request_body_stream, AsyncIterable):
                async for piece in request_body_stream:
                    out.write(piece)
            else:
                while piece := request_body_stream.read(1 << 20):
                    out.write(piece)
        return self.create_download(uri, result_file, name)

    # -- finding ---------------------------------------------------------------------
    def get_current_downloads(self, *, include_groups: bool = False) -> list[DownloadOperation]:
        """The unfinished operations of no transfer group, from earlier processes too.

        As Windows' ``GetCurrentDownloadsAsync()``, members of a transfer group are left
        to ``get_current_downloads_for_transfer_group``: an app's discovery code never
        takes over another part's grouped downloads.  ``include_groups=True`` (beyond
        Windows) returns every unfinished operation of the state directory."""
        return [self._adopt(rec) for rec in self._store.current(ungrouped=not include_groups)]

    def get_failed_downloads(self) -> list[DownloadOperation]:
        """*Beyond*: operations that ended in ERROR and whose error was seen (those
        ``get_current_downloads`` leaves out).  Their partial data and control file
        stay: ``resume()`` continues them (after a new ``requested_uri``, say), and
        ``cancel()`` or ``expire`` removes them."""
        return [self._adopt(rec) for rec in self._store.failed()]

    def get_ended_downloads(self) -> list[EndedDownload]:
        """*Beyond*: the operations that completed or were canceled, oldest first, until
        ``expire`` forgets them."""
        import uuid  # here only (see DownloadOperation.guid)

        return [
            EndedDownload(uuid.UUID(g), uri, Path(path), BackgroundTransferStatus(status), at)
            for g, uri, path, status, at in self._store.ended()
        ]

    def expire(self, keep: float) -> list[DownloadOperation]:
        """*Beyond*: cancel the failed operations (``get_failed_downloads``) older than
        ``keep`` seconds, removing their partial data, and forget the ended ones older
        than that; the operations canceled."""
        before = time.time() - keep
        gone = []
        taken = {rec.result_file for rec in self._store.current()}
        for rec in self._store.failed(before):
            if rec.result_file in taken:  # a newer operation's data is there now: forgotten
                self._store.update(rec.guid, status=BackgroundTransferStatus.CANCELED.value)
                self._store.delete(rec.guid)
                continue
            op = self._adopt(rec)
            with contextlib.suppress(TransferError):  # resumed by another process meanwhile
                op.cancel()
                gone.append(op)
        self._store.forget_ended(before)
        return gone

    def get_current_downloads_for_transfer_group(
        self, group: BackgroundTransferGroup
    ) -> list[DownloadOperation]:
        return [self._adopt(rec) for rec in self._store.current(group.name)]

    async def get_current_downloads_async(
        self, *, include_groups: bool = False
    ) -> list[DownloadOperation]:
        return await asyncio.to_thread(self.get_current_downloads, include_groups=include_groups)

    async def get_current_downloads_for_transfer_group_async(
        self, group: BackgroundTransferGroup
    ) -> list[DownloadOperation]:
        return await asyncio.to_thread(self.get_current_downloads_for_transfer_group, group)

    def _adopt(self, rec: OpRecord) -> DownloadOperation:
        """The one object for an operation: a second lookup returns the first."""
        key = (self.state_dir, rec.guid)
        with _live_lock:
            op = _live.get(key)
            if op is None:
                op = DownloadOperation(rec, self._settings)
                _live[key] = op
            return op


def _names_a_folder(folder: str, name: str) -> bool:
    """True when ``name`` is a directory; InvalidRequestError when ``folder`` is none.

    A lookup of a name that does not exist yet, in a folder other threads are filling,
    waits on the folder's lock behind each file they create and rename: in a mirror of
    5000 files into one folder, the two such lookups a file (this one and the control
    file's) took a sixth of the engine thread.  A folder whose link count is 2 has no
    subdirectory (ext4, XFS, tmpfs count one link for each; btrfs says 1, which
    proves nothing), so ``name`` cannot be one; only a symbolic link to a directory
    escapes this, and the final rename replaces the link, not the directory."""
    try:
        st = os.stat(folder)
    except OSError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise InvalidRequestError(f"{folder}: no such directory")
    return st.st_nlink != 2 and os.path.isdir(name)


def reorder_group(settings: Settings, group: str, guid: str) -> None:
    """Queue positions: ``guid`` and those after it first, the rest after (seq renumbered)."""
    members = settings.store.current(group)
    index = next((i for i, rec in enumerate(members) if rec.guid == guid), None)
    if index is None:
        return
    order = members[index:] + members[:index]
    seqs = sorted(rec.seq for rec in members)
    for rec, seq in zip(order, seqs, strict=True):
        settings.store.update(rec.guid, seq=seq)
        live = _live.get((settings.store.state_dir, rec.guid))
        if live is not None:
            live.record.seq = seq
