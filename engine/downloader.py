"""BackgroundDownloader: the factory of operations, and where they are found again.

The groups it takes live in ``engine.groups`` and are re-exported here and from
``engine``; what its operations share is ``engine._ops.settings.Settings``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

from engine._bulk.gate import Gate
from engine._bulk.hooks import Hooks, Looked
from engine._disk.core import SIDE_SUFFIXES
from engine._disk.trusted import check_folder
from engine._net.ratelimit import Budget
from engine._net.transport import RequestOptions
from engine._ops.live import live, live_lock
from engine._ops.settings import AUTO, Settings
from engine._ops.validate import absolute, check_header, check_sources, check_uri, new_guid
from engine._runtime.conditions import LinuxNetworkMonitor, NetworkMonitor
from engine._state.store import OpRecord, Store
from engine.bulk import BulkDownload, BulkEntry
from engine.config import Durability, TransferConfig
from engine.errors import InvalidRequestError, TransferError
from engine.groups import (
    BackgroundTransferCompletionGroup,
    BackgroundTransferCompletionGroupTrigger,
    BackgroundTransferCompletionGroupTriggerDetails,
    BackgroundTransferGroup,
)
from engine.operation import DownloadOperation
from engine.values import (
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Credential,
)

if TYPE_CHECKING:
    import uuid

RequestBody = bytes | IO[bytes] | AsyncIterable[bytes]

__all__ = [
    "BackgroundDownloader",
    "BackgroundTransferCompletionGroup",
    "BackgroundTransferCompletionGroupTrigger",
    "BackgroundTransferCompletionGroupTriggerDetails",
    "BackgroundTransferGroup",
    "EndedDownload",
    "RequestBody",
]

_service_class: Callable[[], type[BackgroundDownloader]] | None = None
"""Where ``BackgroundDownloader(service=True)`` finds its class (see ``serve_through``)."""


def serve_through(find: Callable[[], type[BackgroundDownloader]]) -> None:
    """Make ``service=True`` build the class ``find()`` returns.  ``engine/__init__.py``
    sets it: the service's client builds on this module, which never imports it."""
    global _service_class
    _service_class = find


class EndedDownload(NamedTuple):
    """*Beyond*: what is remembered of an operation that completed or was canceled."""

    guid: uuid.UUID
    requested_uri: str
    result_file: Path
    status: BackgroundTransferStatus
    ended: float
    """When, in seconds since the epoch."""


class BackgroundDownloader:
    """Creates operations; they inherit its settings.  See docs/api.md.

    ``service=True`` makes a downloader whose operations live in the background
    service (``engine.service.api``): they go on when this process is gone."""

    def __new__(cls, *args: Any, service: bool = False, **kwargs: Any) -> BackgroundDownloader:
        if service and cls is BackgroundDownloader:
            if _service_class is None:
                raise InvalidRequestError("the background service is not available here")
            return super().__new__(_service_class())
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
        if transfer_group is not None and transfer_group.store is not self._store:
            transfer_group = transfer_group.adopted_by(self._store)
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
            self._settings.completion_group.add_member(op)
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

    def create_downloads(
        self,
        entries: Iterable[BulkEntry],
        *,
        job: str | None = None,
        parallel: int = 16,
        progress: Callable[[DownloadOperation], None] | None = None,
        file_ended: Callable[[int, bool], None] | None = None,
        watch: Callable[[DownloadOperation], None] | None = None,
        look: Callable[[Iterable[Looked]], None] | None = None,
        lean: bool = True,
    ) -> BulkDownload:
        """*Beyond*: many files as one persisted job (``engine.bulk``), ``parallel`` at
        a time; ``run()`` fetches them.  ``job`` names it: a job made again under the
        same name continues (``None``: a new name).  ``progress`` follows each full
        operation (a large file), ``watch`` is told of each as it starts,
        ``file_ended(size, completed)`` of each small file, and ``look`` gets the full
        operations in flight, and the small files waiting for the network or for disk
        space (``engine._bulk.hooks.Looked``), every ``poll_interval`` seconds.  Small
        files wait as full operations do: for a network, for one that is not metered
        under ``UNRESTRICTED_ONLY``, for free space above the reserve.
        ``lean=False`` makes every file a full operation from its first request."""
        s = self._settings
        plain = s.server_credential is None and s.proxy is None and s.proxy_credential is None
        request = None
        if not plain:
            request = RequestOptions(
                user=s.server_credential.pair if s.server_credential else None,
                proxy=s.proxy,
                proxy_user=s.proxy_credential.pair if s.proxy_credential else None,
            )
        lean = (
            lean
            and self.method == "GET"
            and self.transfer_group is None
            and s.completion_group is None
        )
        hooks = Hooks(
            create=lambda uri, path, sources: self.create_download(uri, path, sources=sources),
            config=s.config,
            headers=[f"{k}: {v}" for k, v in self._headers],
            request=request,
            lean=lean,
            budget=Budget(0, s.budget),
            progress=progress,
            watch=watch,
            ended=file_ended,
            look=look,
            look_every=s.config.poll_interval,
            gate=Gate(s.network_monitor, self.cost_policy, s),
        )
        name = job if job is not None else f"bulk-{new_guid()}"
        return BulkDownload(self, self._store, name, entries, parallel, hooks)

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
        with live_lock:
            found = live.get(key)
            if isinstance(found, DownloadOperation):
                return found
            op = DownloadOperation(rec, self._settings)
            live[key] = op
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
