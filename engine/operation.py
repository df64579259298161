"""DownloadOperation: one persisted download, its status machine, progress and events.

Theory of operation
-------------------
The object lives on the caller's side; the work runs on the engine loop (``_loop``).
Every status change goes through ``move``: the table in ``_states`` decides, the
state database records it, and only then are progress callbacks told.  Calls that
change the status (``pause``, ``resume``, ``cancel``) do the transition at once on
the calling thread (so an illegal call raises there and changes nothing) and leave
the engine loop to stop or start the work.

While the operation runs, a ``Runner`` (``runner``, a task on the engine loop)
waits for the network, its cost policy and free disk to allow it, waits for the
scheduler, then drives a ``SegmentedDownload`` whose progress ticks feed the
throttled progress callbacks and the ``ranges_downloaded`` events (``_reporting``);
reads of the result park in ``_reading`` until their bytes arrive.  An outcome future resolves once,
when the operation completes, fails or is cancelled; ``start_async``, ``attach_async``
and ``wait`` all wait on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._disk.checksum import parse
from engine._disk.core import RangeFile, control_path, peek, remove_partial
from engine._download.segmented import SegmentedDownload, Snapshot
from engine._net.ratelimit import Budget
from engine._net.transport import ResponseHead
from engine._ops.cross_process import ask_to_cancel
from engine._ops.interfaces import Pokable
from engine._ops.outcome import NotSettled, Outcome
from engine._ops.reading import Readers
from engine._ops.reporting import Reporter
from engine._ops.runner import Runner
from engine._ops.scheduler import scheduler
from engine._ops.starting import Starting
from engine._ops.states import ENGINE_PAUSE_FOR, TERMINAL, Event, next_status
from engine._ops.streams import ResultStream
from engine._ops.validate import check_header, check_uri
from engine._runtime.loop import engine_here, engine_loop, running_loop
from engine._state.oplock import OpLock
from engine._state.store import OpRecord, Store
from engine.errors import (
    ControlFileError,
    HttpError,
    InvalidRequestError,
    InvalidStateError,
    ResultFileInUseError,
    StorageError,
    TransferCanceled,
    TransferError,
    TransportError,
)
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferBehavior,
    BackgroundTransferCostPolicy,
    BackgroundTransferFileRange,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    ResponseInformation,
)
from engine.values import Event as ApiEvent
from engine.web_error import WebErrorStatus

if TYPE_CHECKING:
    import uuid

    from engine.downloader import Settings

S = BackgroundTransferStatus
_STATUS = {s.value: s for s in S}
ProgressCallback = Callable[["DownloadOperation"], "Awaitable[None] | None"]
"""``progress(op)``: a plain function, or an ``async def`` run as a task of the loop
it is delivered on (C#'s ``async void`` handler): the next report does not wait for it."""


_CLEARS_ERROR = (S.RUNNING, S.PAUSED_BY_APPLICATION, S.COMPLETED, S.CANCELED)
"""Statuses that leave no web error behind (a tuple: a set would hash an Enum member,
a Python-level call)."""

_NEW_URI_IN = (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS, S.ERROR)
"""Statuses in which requested_uri may change: nothing is fetching from the old one."""

_RANK = {p.value: p.rank for p in BackgroundTransferPriority}
"""Queue rank by stored priority value: the scheduler sorts by it, a file at a time."""


class DownloadOperation:
    """One download: created by ``BackgroundDownloader.create_download`` or found again."""

    # Declared here, set on the instance when they change (a mirror makes thousands).
    _guid: uuid.UUID | None = None  # parsed when asked: most never are
    _result: Path | None = None  # made when asked: a mirror's files never are
    _job: SegmentedDownload | None = None
    _task: asyncio.Task[None] | None = None
    _started = False
    _finishing = False
    _bytes = 0
    _restarted = False
    _response_changed = False
    _response_from: tuple[str, ResponseHead, bool] | None = None
    _response: tuple[object, ResponseInformation] | None = None
    _ranges: list[tuple[int, int]] | None = None
    _restarts_seen = 0
    _response_seen = False  # the running job's first response was reported
    runner: Pokable | None = None
    """What drives it on the engine loop now (a ``Runner``), if anything."""
    _unsaved_running = False
    _connections = 0
    _rate = 0  # max_bytes_per_second
    _duplicated = 0
    _dropped: dict[str, str] = {}  # noqa: RUF012 (replaced, never changed in place)
    _budget: Budget | None = None  # its share of the downloader's rate, made at its first run
    _new = False  # made by create_download in this process and not yet run: no files
    _space_needed = 0  # the declared size it waits to have room for (PAUSED_SYSTEM_POLICY)

    def __init__(self, rec: OpRecord, settings: Settings) -> None:
        self._rec = rec
        self._settings = settings
        self._store: Store = settings.store
        self._lock = threading.RLock()
        self.ranges_downloaded: ApiEvent[BackgroundDownloadRangesDownloadedEventArgs] = ApiEvent()
        self.recoverable_web_error_statuses: set[WebErrorStatus] = {
            WebErrorStatus(v) for v in rec.recoverable
        }
        # None when it completed (wait() returns self): the operation as its own
        # result made a reference cycle, and every finished one waited for the collector
        self._outcome: Outcome[None] = Outcome()
        self._total = rec.total
        self._reporter = Reporter()
        self._readers = Readers()
        self._oplock = OpLock(self._store.state_dir, rec.guid)

    # -- what it is ---------------------------------------------------------------
    @property
    def guid(self) -> uuid.UUID:
        guid = self._guid
        if guid is None:
            import uuid  # here only: 3 ms of every command's start-up (with platform)

            guid = self._guid = uuid.UUID(self._rec.guid)
        return guid

    @property
    def requested_uri(self) -> str:
        return self._rec.uri

    @requested_uri.setter
    def requested_uri(self, uri: str) -> None:
        """Settable while paused or failed (e.g. a fresh signed URL); resume() then
        continues from the partial data when the new URL serves the same content (same
        size and validators: else it starts over, never mixing two contents)."""
        with self._lock:
            if self.status not in _NEW_URI_IN:
                raise InvalidStateError(
                    f"requested_uri can only change while paused or failed, not in "
                    f"{self.status.name}"
                )
            check_uri(uri)
            self._store.update(self._rec.guid, uri=uri)
            self._rec.uri = uri

    @property
    def method(self) -> str:
        return self._rec.method

    @property
    def result_file(self) -> Path:
        path = self._result
        if path is None:
            path = self._result = Path(self._rec.result_file)
        return path

    @property
    def transfer_group(self) -> Any:
        from engine.downloader import BackgroundTransferGroup

        name = self._rec.group_name
        return None if name is None else BackgroundTransferGroup(name, self._store)

    @property
    def priority(self) -> BackgroundTransferPriority:
        return BackgroundTransferPriority(self._rec.priority)

    @priority.setter
    def priority(self, value: BackgroundTransferPriority) -> None:
        self._store.update(self._rec.guid, priority=value.value)
        self._rec.priority = value.value
        self._on_engine(lambda: scheduler().pump())

    @property
    def cost_policy(self) -> BackgroundTransferCostPolicy:
        return BackgroundTransferCostPolicy(self._rec.cost_policy)

    @cost_policy.setter
    def cost_policy(self, value: BackgroundTransferCostPolicy) -> None:
        """Acted on at once: a PAUSED_COSTED_NETWORK operation allowed now goes on, a
        running one on a metered network that may no longer use it pauses."""
        self._store.update(self._rec.guid, cost_policy=value.value)
        self._rec.cost_policy = value.value
        if self.runner is not None:  # nothing runs it yet: its runner reads the new value
            self._on_engine(self._poke_runner)

    def _poke_runner(self) -> None:
        runner = self.runner
        if runner is not None:
            runner.poke()

    @property
    def is_random_access_required(self) -> bool:
        return self._rec.random_access

    @is_random_access_required.setter
    def is_random_access_required(self, value: bool) -> None:
        with self._lock:
            if self._started or self.status is not S.IDLE:
                raise InvalidStateError("is_random_access_required can only be set before start")
            self._store.update(self._rec.guid, random_access=int(value))
            self._rec.random_access = bool(value)

    @property
    def expected_checksum(self) -> tuple[str, str] | None:
        """*Beyond*: ``(algorithm, hex)`` the finished file must match, else ERROR.

        Set it with ``"sha256=..."`` (also sha1, md5, xxh3, xxh128) before the end;
        the check runs on the partial file, so a mismatch never reaches the final name.
        """
        spec = self._rec.checksum
        return None if spec is None else parse(spec)

    @expected_checksum.setter
    def expected_checksum(self, spec: str | None) -> None:
        value = None if spec is None else "=".join(parse(spec))
        self._store.update(self._rec.guid, checksum=value)
        self._rec.checksum = value

    @property
    def connections(self) -> int:
        """*Beyond*: requests in flight for this operation at the last progress tick."""
        return self._connections

    @property
    def sources(self) -> list[str]:
        """*Beyond*: the URLs the file is fetched from, ``requested_uri`` first."""
        return [self._rec.uri, *self._rec.sources]

    @property
    def dropped_sources(self) -> dict[str, str]:
        """*Beyond*: the sources no longer used, each with why (it disagreed on the
        size or validators, changed, or kept failing), at the last progress tick."""
        return dict(self._dropped)

    @property
    def duplicated_bytes(self) -> int:
        """*Beyond*: bytes received twice in this run, at the last progress tick: a
        connection with nothing left raced a much slower one for the end of its range
        (see docs/sources.md); the copy that came second was dropped."""
        return self._duplicated

    @property
    def max_bytes_per_second(self) -> int:
        """*Beyond*: the most bytes a second this download receives (0: no limit of its
        own; the downloader's total still applies).  Kept for the life of this object,
        not in the state database; a change applies to the connections on the wire."""
        return self._rate

    @max_bytes_per_second.setter
    def max_bytes_per_second(self, value: int) -> None:
        if value < 0:
            raise InvalidRequestError("max_bytes_per_second must be 0 (no limit) or more")
        self._rate = value
        if self._budget is not None:
            self._budget.rate = value

    def rate_budget(self) -> Budget:
        """The budget its requests take their rate from (engine loop)."""
        budget = self._budget
        if budget is None:
            budget = self._budget = Budget(self._rate, self._settings.budget)
        return budget

    @property
    def status(self) -> BackgroundTransferStatus:
        return _STATUS[self._rec.status]  # read everywhere: a lookup, not an Enum call

    @property
    def current_web_error_status(self) -> WebErrorStatus | None:
        value = self._rec.web_error
        return None if value is None else WebErrorStatus(value)

    @property
    def error(self) -> TransferError | None:
        """*Beyond*: what it failed or paused on (ERROR, PAUSED_RECOVERABLE_WEB_ERROR_STATUS),
        its message as stored (secrets in URLs masked); None in any other status."""
        if self._rec.error_message is None or self.status not in _NEW_URI_IN[1:]:
            return None
        return self.stored_error()

    @property
    def progress(self) -> BackgroundDownloadProgress:
        self._refresh_bytes()
        return BackgroundDownloadProgress(
            self._bytes, self._total, self.status, self._restarted, self._response_changed
        )

    # -- the engine side's view (engine._ops.interfaces.EngineOperation) ---------------
    @property
    def record(self) -> OpRecord:
        """Its row of the state database, as this process last wrote or read it."""
        return self._rec

    @property
    def settings(self) -> Settings:
        """What it shares with the other operations of its downloader."""
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def store(self) -> Store:
        """The state database it lives in."""
        return self._store

    @property
    def oplock(self) -> OpLock:
        """The lock that makes one process at a time drive it."""
        return self._oplock

    @property
    def outcome(self) -> Outcome[None]:
        """Settled once, when it completes, fails or is cancelled (a resume makes a new one)."""
        return self._outcome

    @property
    def job(self) -> SegmentedDownload | None:
        """The run of the download in progress, if any."""
        return self._job

    @property
    def bytes_received(self) -> int:
        """Body bytes received, as of the last tick (``progress`` looks at the disk)."""
        return self._bytes

    @property
    def total_bytes(self) -> int:
        """The size of the result, 0 while unknown."""
        return self._total

    @property
    def last_progress(self) -> BackgroundDownloadProgress:
        """``progress`` as of the last tick, without looking at the disk."""
        return BackgroundDownloadProgress(
            self._bytes, self._total, self.status, self._restarted, self._response_changed
        )

    def progress_told(self) -> None:
        """A progress callback was told: the restart and new-response flags are true in
        the first snapshot after a restart or a new response only."""
        self._restarted = False
        self._response_changed = False

    def live_ranges(self) -> list[tuple[int, int]]:
        """The ranges present as of the last tick (none before the first)."""
        return self._ranges or []

    def give_up_elsewhere(self) -> None:
        """Another process took the drive lock first: this run ends before it began."""
        self._started = False
        self.fail_outcome(self.elsewhere_error())

    def made_here(self) -> None:
        """Made by create_download in this process: nothing of it is on disk yet."""
        self._new = True

    def take_new(self) -> bool:
        """True once: made by create_download in this process and never run, so there
        are no files of an earlier run to look for."""
        new, self._new = self._new, False
        return new

    def job_ended(self) -> None:
        """The run of the download ended, whichever way: nothing of it is live now."""
        self._ranges = None
        self._job = None

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """Held while the finished file is renamed into place: pause() and cancel() are
        refused meanwhile.  CancelledError when one of them came a moment before."""
        with self._lock:
            if self.status is not S.RUNNING:
                raise asyncio.CancelledError  # paused or cancelled a moment ago
            self._finishing = True
        try:
            yield
        finally:
            with self._lock:
                self._finishing = False

    def mark_complete(self, size: int | None) -> None:
        """Every byte is in place under the final name (``size`` of them, when known)."""
        self._total = size or self._bytes
        self._bytes = self._total
        self.move(Event.COMPLETE)

    # -- the scheduler's view -------------------------------------------------------
    @property
    def sort_key(self) -> tuple[int, int]:
        return (_RANK[self._rec.priority], self._rec.seq)

    def rank(self) -> int:
        """The priority rank its requests wait for a connection slot with."""
        return _RANK[self._rec.priority]

    @property
    def serial_group(self) -> str | None:
        name = self._rec.group_name
        if name is None:
            return None
        behavior = BackgroundTransferBehavior(self._store.group_behavior(name, None))
        return name if behavior is BackgroundTransferBehavior.SERIALIZED else None

    # -- starting and waiting ---------------------------------------------------------
    def start_async(
        self, progress: ProgressCallback | None = None
    ) -> Coroutine[Any, Any, DownloadOperation]:
        """Start; resolves on COMPLETED, raises on ERROR, TransferCanceled on cancel.

        Cancelling the awaiting task cancels the download, even before it ran a step."""
        return Starting(lambda: self._run_async(Event.START, progress), self._cancel_unstarted)

    def attach_async(
        self, progress: ProgressCallback | None = None
    ) -> Coroutine[Any, Any, DownloadOperation]:
        """Take over an operation found by get_current_downloads and let it go on.

        Cancelling the awaiting task cancels the download, even before it ran a step."""
        return Starting(lambda: self._run_async(Event.ATTACH, progress), self._cancel_unstarted)

    async def _run_async(
        self, event: Event, progress: ProgressCallback | None
    ) -> DownloadOperation:
        self._begin(event, progress, asyncio.get_running_loop())
        return await self._await_outcome()

    def _cancel_unstarted(self) -> None:
        """A cancelled token given to StartAsync/AttachAsync cancels the download."""
        if self.status not in TERMINAL:
            self.cancel()

    def start(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """Start without asyncio and return at once; ``wait()`` blocks until the end."""
        self._begin(Event.START, progress, None)
        return self

    def attach(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """*Beyond*: ``attach_async`` without asyncio; returns at once, then ``wait()``."""
        self._begin(Event.ATTACH, progress, None)
        return self

    @property
    def space_needed(self) -> int:
        """*Beyond*: the size its file needs free (above the reserve) before it can be
        made, while PAUSED_SYSTEM_POLICY waits for that room; else 0."""
        return self._space_needed

    def need_space(self, size: int) -> None:
        """Wait in PAUSED_SYSTEM_POLICY until ``size`` bytes fit (0: they fit now)."""
        self._space_needed = size

    def wait(self, timeout: float | None = None) -> DownloadOperation:
        """Block until COMPLETED (returns), ERROR (raises) or cancel (TransferCanceled).

        A ``TimeoutError`` that is not a ``TransferError`` says only that ``timeout``
        ran out; a transfer that timed out raises ``TransferTimeoutError``."""
        try:
            self._outcome.result(timeout)
        except NotSettled:
            raise TimeoutError(f"{self.result_file}: not finished after {timeout} s") from None
        except TransferError:
            self._acknowledge()
            raise
        return self

    async def wait_async(self) -> DownloadOperation:
        """*Beyond*: ``wait()`` for asyncio.  Unlike awaiting ``start_async``, cancelling
        the awaiting task leaves the download as it is (running, or paused)."""
        try:
            await self._outcome_here()
        except TransferError:
            self._acknowledge()
            raise
        return self

    async def _await_outcome(self) -> DownloadOperation:
        """Like ``wait_async``, except that cancelling the awaiting task cancels the
        download (as cancelling the IAsyncOperation does in Windows)."""
        try:
            await self._outcome_here()
        except asyncio.CancelledError:
            if self.status not in TERMINAL:
                self.cancel()
            raise
        except TransferError:
            self._acknowledge()
            raise
        return self

    def _outcome_here(self) -> asyncio.Future[None]:
        """The outcome, copied one way into a future of the running loop: cancelling
        it touches nothing else (no shield needed), and an outcome settled on this
        loop's own thread (the engine's) is copied at once, without a wake-up write."""
        loop = running_loop()
        here: asyncio.Future[None] = loop.create_future()
        owner = threading.get_ident()

        def copy(done: Outcome[None]) -> None:
            if here.cancelled():
                return
            exc = done.exception()
            if exc is None:
                here.set_result(None)
            else:
                here.set_exception(exc)

        def settled(done: Outcome[None]) -> None:
            if threading.get_ident() == owner:
                copy(done)
            else:
                with contextlib.suppress(RuntimeError):  # the waiting loop was closed
                    loop.call_soon_threadsafe(copy, done)

        self._outcome.add_done_callback(settled)
        return here

    def _begin(
        self,
        event: Event,
        progress: ProgressCallback | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Start or attach.  Attaching to an operation this process already runs (or
        just resumed) only adds the callback: there is one download, many watchers."""
        with self._lock:
            if self._started:
                self._refuse_if_elsewhere()
            elif not self._oplock.acquire():  # held from here: the runner takes it over
                raise self.elsewhere_error()
            spawned = False
            try:
                if event is Event.START and (self._started or self.status is not S.IDLE):
                    raise InvalidStateError(
                        f"start needs an IDLE operation not yet started (this one is "
                        f"{self.status.name}); use attach_async for one found again"
                    )
                self._reporter.watch(progress, loop)
                if self._started:
                    spawned = True  # a runner of ours holds the lock: leave it
                    return
                self._started = True
                if self.status is S.ERROR:
                    self.fail_outcome(self.stored_error())
                    return
                if event is Event.ATTACH and self.status is not S.IDLE:
                    self.move(Event.ATTACH)
                if self.status in (S.IDLE, S.RUNNING, *ENGINE_PAUSE_FOR.values()):
                    self._spawn()
                    spawned = True
            finally:
                if not spawned:
                    self._oplock.release()

    # -- application control ---------------------------------------------------------
    def pause(self) -> None:
        """PAUSED_BY_APPLICATION; the bitmap keeps what arrived."""
        with self._lock:
            if self._rec.method != "GET":
                raise InvalidStateError(f"a {self._rec.method} download cannot be paused")
            self._refuse_if_elsewhere()
            self._refuse_while_finishing("pause")
            self.move(Event.PAUSE)
            self._stop_runner()

    def resume(self) -> None:
        """Back to RUNNING from a pause (or from ERROR, e.g. after disk space was freed)."""
        with self._lock:
            self._refuse_if_elsewhere()
            was_error = self.status is S.ERROR
            self.move(Event.RESUME)
            if was_error or self._outcome.done():
                self._outcome = Outcome()
                self._store.update(self._rec.guid, acknowledged=0)
            self._started = True
            self._spawn()

    def cancel(self) -> None:
        """CANCELED: stop, remove the partial data; the awaiting call raises TransferCanceled.

        An operation another live process drives is canceled by that process, asked
        through the state database (``engine._ops.cross_process``); this returns once it has."""
        if self._oplock.held_elsewhere():
            if ask_to_cancel(self):
                with self._lock:
                    self._rec.status = S.CANCELED.value  # its row is gone with it
                self.fail_outcome(self.canceled_error())
                return
            fresh = self._store.get(self._rec.guid)  # its driver let go: as it left it
            if fresh is None:
                raise InvalidStateError(
                    f"{self.result_file}: operation {self.guid} ended in another process",
                    guid=self.guid,
                )
            with self._lock:
                self._rec = fresh
        with self._lock:
            self._refuse_if_elsewhere()
            self._refuse_while_finishing("cancel")
            self.move(Event.CANCEL)
            task = self._task
        done = self._on_engine(lambda: self._cleanup_canceled(task))
        if done is not None:
            done.result()

    def _refuse_if_elsewhere(self) -> None:
        if self._oplock.held_elsewhere():
            raise self.elsewhere_error()

    def elsewhere_error(self) -> ResultFileInUseError:
        return ResultFileInUseError(
            f"{self.result_file}: operation {self.guid} is driven by another process",
            guid=self.guid,
        )

    def _refuse_while_finishing(self, what: str) -> None:
        if self._finishing:
            raise InvalidStateError(f"cannot {what}: {self.result_file} is being completed")

    async def _cleanup_canceled(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        remove_partial(self.result_file)
        self.fail_outcome(self.canceled_error())

    def canceled_error(self) -> TransferCanceled:
        return TransferCanceled(f"{self.result_file}: canceled", guid=self.guid)

    # -- reading while it downloads ----------------------------------------------------------
    def get_result_stream_at(
        self, position: int = 0, *, timeout: float | None = None
    ) -> ResultStream:
        """A readable stream from ``position``; reads of bytes not yet there wait for them."""
        return ResultStream(self, position, timeout=timeout, seekable=False)

    def get_result_random_access_stream_reference(
        self, *, timeout: float | None = None
    ) -> ResultStream:
        """A new seekable stream over the whole result; a read pulls its offset forward."""
        if not self.is_random_access_required:
            raise InvalidStateError(
                "get_result_random_access_stream_reference needs is_random_access_required"
            )
        return ResultStream(self, 0, timeout=timeout, seekable=True)

    async def available(self, offset: int, want: int) -> int:
        return await self._readers.available(self, offset, want)

    def wake_readers(self) -> None:
        self._readers.wake()

    def make_current_in_transfer_group(self) -> None:
        """Move this operation (and those queued after it) to the front of its group."""
        from engine.downloader import reorder_group

        if self._rec.group_name is None:
            return
        reorder_group(self._settings, self._rec.group_name, self._rec.guid)
        self._on_engine(lambda: scheduler().pump())

    # -- headers ---------------------------------------------------------------------
    def set_request_header(self, name: str, value: str) -> None:
        """Sent from the next request on; a second value for a name is comma-joined."""
        check_header(name, value)
        headers = list(self._rec.headers)
        for i, (key, old) in enumerate(headers):
            if key.lower() == name.lower():
                headers[i] = (key, f"{old}, {value}")
                break
        else:
            headers.append((name, value))
        self._set_headers(headers)

    def remove_request_header(self, name: str) -> None:
        self._set_headers([(k, v) for k, v in self._rec.headers if k.lower() != name.lower()])

    def _set_headers(self, headers: list[tuple[str, str]]) -> None:
        self._store.update(self._rec.guid, headers=headers)
        self._rec.headers = headers
        job = self._job
        if job is not None:
            job.headers = self.header_lines()

    def header_lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self._rec.headers]

    # -- what arrived ------------------------------------------------------------------
    def get_response_information(self) -> ResponseInformation | None:
        source = self._response_from
        if source is None:
            return None
        made = self._response
        if made is None or made[0] is not source:
            url, head, ranges = source
            headers: dict[str, str] = {}
            for key, value in head.headers:
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            wire = head.status
            status = 200 if wire == 206 else wire  # the resource, as Windows reports it
            made = self._response = (
                source,
                ResponseInformation(url, headers, ranges, status, wire),
            )
        return made[1]

    def get_downloaded_ranges(self) -> list[BackgroundTransferFileRange]:
        return [BackgroundTransferFileRange(o, n) for o, n in self.current_ranges()]

    def current_ranges(self) -> list[tuple[int, int]]:
        if self.status is S.COMPLETED:
            return [(0, self._total)] if self._total else []
        if self._ranges is not None:
            return list(self._ranges)
        return self.disk_ranges()

    def disk_ranges(self) -> list[tuple[int, int]]:
        """The ranges an earlier run left in the control file (none when there is none)."""
        try:
            found = peek(self.result_file)
            if found is None:
                return []
            with RangeFile(self.result_file, found[0], found[1], create=False) as rf:
                self._total = found[0]
                return rf.ranges()
        except (ControlFileError, StorageError):
            return []

    def continue_found(self) -> None:
        """A control file under this operation's name was left by an operation of
        another state directory (a mirror's shard run again on another machine):
        the first run looks for it and continues it rather than starting over."""
        self._new = False

    def _refresh_bytes(self) -> None:
        job = self._job
        if job is not None and self._task is not None and not self._task.done():
            return  # the ticks keep _bytes current
        if self.status is S.COMPLETED:
            self._bytes = self._total
        elif self._ranges is None and control_path(self.result_file).exists():
            self._bytes = sum(n for _, n in self.disk_ranges())

    # -- transitions ---------------------------------------------------------------------
    def move(self, event: Event, error: TransferError | None = None) -> BackgroundTransferStatus:
        """Apply the table, persist, then report; the only place a status changes.

        One exception: IDLE -> RUNNING is written (``save_running``) before the
        download makes a control file, else at the first progress tick or with the
        next change.  Most small files end before any of these, so it would be
        written only to be deleted; a crash before it leaves the row IDLE with no
        partial data worth a word, which a later attach treats the same way."""
        with self._lock:
            old = self.status
            new = next_status(old, event)
            fields: dict[str, Any] = {"status": new._value_}  # not .value: a property call
            if error is not None:
                fields["web_error"] = (
                    error.web_error_status.value if error.web_error_status is not None else None
                )
                fields["error_message"] = str(error)
            elif new in _CLEARS_ERROR:
                fields["web_error"] = None
                fields["error_message"] = None
            if new is S.ERROR:
                fields["acknowledged"] = 0
            self._unsaved_running = old is S.IDLE and new is S.RUNNING
            if new in TERMINAL:
                if new is S.CANCELED:  # the ended table remembers it as canceled
                    self._store.update(self._rec.guid, status=new._value_)
                self._store.delete(self._rec.guid)  # finished: no row left to find again
            elif not self._unsaved_running:
                self._store.update(self._rec.guid, **fields)
            for key, value in fields.items():
                setattr(self._rec, key, value)
        self._store.when_durable(lambda: self._announce(new))
        return new

    def _announce(self, new: BackgroundTransferStatus) -> None:
        """Tell about a status change, now that the state database has it."""
        self._report()
        if engine_here() is None:  # parking is atomic on the engine loop only
            engine_loop().loop.call_soon_threadsafe(self.wake_readers)
        elif self._readers.waiters:
            self.wake_readers()
        if new in (S.COMPLETED, S.CANCELED, S.ERROR):
            self._settings.ended(self)

    def stored_error(self) -> TransferError:
        status = self.current_web_error_status
        message = self._rec.error_message or f"{self.result_file}: failed"
        if status is not None and 300 <= status.value < 600:
            return HttpError(message, status_code=status.value, guid=self.guid)
        return TransportError(message, web_error_status=status, guid=self.guid)

    def fail_outcome(self, exc: BaseException) -> None:
        self.settle_outcome(exc)

    def settle_outcome(self, exc: BaseException | None) -> None:
        """Resolve the outcome (once) when the status that goes with it is durable:
        a ``wait()`` that returned never sees an older status after a crash."""
        outcome = self._outcome

        def settle() -> None:
            if outcome.done():
                return
            if exc is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(exc)

        self._store.when_durable(settle)

    def _acknowledge(self) -> None:
        """The error reached the application: the operation is not current any more.

        Its row stays (marked) while its partial data does, so resume() can continue."""
        if self.status is S.ERROR and not self._rec.acknowledged:
            self._store.update(self._rec.guid, acknowledged=1)
            self._rec.acknowledged = True

    # -- the engine side ---------------------------------------------------------------------
    def _on_engine(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any] | None:
        """Run ``fn`` (a coroutine function or a plain one) on the engine loop.

        Returns a future to wait on when called from another thread; None on the
        engine thread itself, where waiting would deadlock.
        """
        engine = engine_loop()

        async def call() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                return await result
            return result

        if threading.current_thread() is engine.thread:
            engine.loop.create_task(call())
            return None
        return engine.submit(call())

    def _spawn(self) -> None:
        recoverable = sorted(v.value for v in self.recoverable_web_error_statuses)
        if recoverable != self._rec.recoverable:
            self._store.update(self._rec.guid, recoverable=recoverable)
            self._rec.recoverable = recoverable
        previous = self._task

        async def start() -> None:
            if previous is not None and not previous.done():
                await asyncio.gather(previous, return_exceptions=True)
            self._task = asyncio.current_task(engine_loop().loop)
            await Runner(self).run()

        engine = engine_loop()
        if engine_here() is engine.loop:
            engine.loop.create_task(start())  # no wake-up write from the engine thread
        else:
            engine.submit(start())  # outcome and status carry the result

    def _stop_runner(self) -> None:
        task = self._task
        if task is not None:
            engine_loop().loop.call_soon_threadsafe(task.cancel)

    # -- progress and events -----------------------------------------------------------------
    def save_running(self, *, now: bool = False) -> None:
        """Write the RUNNING that ``move`` left unwritten; ``now``: committed before
        this returns (a control file follows, and list must say RUNNING by then)."""
        with self._lock:
            if self._unsaved_running and self.status is S.RUNNING:
                self._store.update(self._rec.guid, status=S.RUNNING.value)
            self._unsaved_running = False
        if now:
            self._store.commit()

    def on_tick(self, snap: Snapshot) -> None:
        if self._unsaved_running:
            self.save_running()
        job = self._job
        self._bytes = snap.bytes_received
        self._connections = snap.connections
        self._duplicated = snap.duplicated
        if snap.total_bytes_to_receive:
            self._total = snap.total_bytes_to_receive
        if job is not None:
            if job.sources.several:
                self._dropped = job.sources.reasons()
            if job.restarts > self._restarts_seen:
                self._restarts_seen = job.restarts
                self.note_restart()
            if job.last_head is not None and not self._response_seen:
                # "Whenever new response information is available due to a new request
                # being invoked": the first response of each run (start, resume, a
                # restart), not every ranged request of one run
                self._response_seen = True
                self._response_changed = True
            if job.last_head is not None:  # made into ResponseInformation when asked
                self._response_from = (
                    job.actual_url,
                    job.last_head,
                    bool(job.ranges_ok and job.size),
                )
            if job.rf is not None and not job.rf.closed:
                self._ranges = job.rf.ranges()
        self.flush_ranges_event(final=False)
        self._report()

    def new_job(self, job: SegmentedDownload) -> None:
        """A run of the download begins: its restarts and first response count anew."""
        self._job = job
        self._restarts_seen = 0
        self._response_seen = False

    def note_restart(self) -> None:
        """The download started over from zero: true in the next progress report, and
        the next ranges_downloaded event says so (what it added before is void)."""
        self._restarted = True
        self._response_seen = False  # the restart's own response is a new one
        self._reporter.restarted()

    def _report(self) -> None:
        self._reporter.report(self)

    def flush_ranges_event(self, *, final: bool) -> None:
        self._reporter.flush_ranges(self, final=final)
