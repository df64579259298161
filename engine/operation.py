"""DownloadOperation: one persisted download, its status machine, progress and events.

Theory of operation
-------------------
The object lives on the caller's side; the work runs on the engine loop (``_loop``).
Every status change goes through ``_move``: the table in ``_states`` decides, the
state database records it, and only then are progress callbacks told.  Calls that
change the status (``pause``, ``resume``, ``cancel``) do the transition at once on
the calling thread (so an illegal call raises there and changes nothing) and leave
the engine loop to stop or start the work.

While the operation runs, ``_runner`` (a task on the engine loop) waits for the
network, its cost policy and free disk to allow it, waits for the scheduler, then
drives a ``SegmentedDownload`` whose progress ticks feed the throttled progress
callbacks and the ``ranges_downloaded`` events.  An outcome future resolves once,
when the operation completes, fails or is cancelled; ``start_async``, ``attach_async``
and ``wait`` all wait on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._checksum import file_digest, parse
from engine._core import RangeFile, control_path, part_path, peek, remove_partial
from engine._loop import engine_loop
from engine._scheduler import scheduler
from engine._segmented import SegmentedDownload, Snapshot
from engine._states import TERMINAL, Event, next_status
from engine._store import OpRecord, Store
from engine._streams import ResultStream
from engine._transport import RequestOptions
from engine._values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferCostPolicy,
    BackgroundTransferFileRange,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Deferral,
    ResponseInformation,
    merge_ranges,
    subtract_ranges,
)
from engine._values import Event as ApiEvent
from engine._web_error import WebErrorStatus
from engine.errors import (
    ControlFileError,
    HttpError,
    IntegrityError,
    InvalidRequestError,
    InvalidStateError,
    StorageError,
    TransferCanceled,
    TransferError,
    TransportError,
)

if TYPE_CHECKING:
    from engine.downloader import Settings

S = BackgroundTransferStatus
ProgressCallback = Callable[["DownloadOperation"], None]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NETWORK_FAILURES = frozenset(
    {
        WebErrorStatus.CANNOT_CONNECT,
        WebErrorStatus.HOST_NAME_NOT_RESOLVED,
        WebErrorStatus.SERVER_UNREACHABLE,
        WebErrorStatus.DISCONNECTED,
        WebErrorStatus.CONNECTION_RESET,
        WebErrorStatus.TIMEOUT,
    }
)
_ENGINE_PAUSE_FOR = {
    Event.NO_NETWORK: S.PAUSED_NO_NETWORK,
    Event.COSTED_NETWORK: S.PAUSED_COSTED_NETWORK,
    Event.SYSTEM_POLICY: S.PAUSED_SYSTEM_POLICY,
}


def check_header(name: str, value: str) -> None:
    """Refuse a header that could split the request: names are tokens, no CR/LF/NUL."""
    if not _TOKEN.match(name):
        raise InvalidRequestError(f"invalid request header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise InvalidRequestError(f"request header {name!r}: value contains CR, LF or NUL")


class _Pause(Exception):
    """Raised inside the runner when the engine itself must pause the operation."""

    def __init__(self, event: Event) -> None:
        super().__init__(event.value)
        self.event = event


class DownloadOperation:
    """One download: created by ``BackgroundDownloader.create_download`` or found again."""

    def __init__(self, rec: OpRecord, settings: Settings) -> None:
        self._rec = rec
        self._result = Path(rec.result_file)
        self._settings = settings
        self._store: Store = settings.store
        self._lock = threading.RLock()
        self.ranges_downloaded: ApiEvent[BackgroundDownloadRangesDownloadedEventArgs] = ApiEvent()
        self.recoverable_web_error_statuses: set[WebErrorStatus] = {
            WebErrorStatus(v) for v in rec.recoverable
        }
        self._job: SegmentedDownload | None = None
        self._task: asyncio.Task[None] | None = None
        self._outcome: concurrent.futures.Future[DownloadOperation] = concurrent.futures.Future()
        self._callbacks: list[tuple[ProgressCallback, asyncio.AbstractEventLoop | None]] = []
        self._started = False
        self._finishing = False
        self._bytes = 0
        self._total = rec.total
        self._restarted = False
        self._response_changed = False
        self._response: ResponseInformation | None = None
        self._ranges: list[tuple[int, int]] | None = None
        self._reported: list[tuple[int, int]] = []
        self._pending: list[tuple[int, int]] = []
        self._pending_restart = False
        self._restarts_seen = 0
        self._event_busy = False
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._last_reported: tuple[Any, ...] | None = None
        self._connections = 0
        self._waiters: list[asyncio.Future[None]] = []
        """Readers waiting for bytes (engine loop only); woken when blocks complete."""

    # -- what it is ---------------------------------------------------------------
    @property
    def guid(self) -> uuid.UUID:
        return uuid.UUID(self._rec.guid)

    @property
    def requested_uri(self) -> str:
        return self._rec.uri

    @requested_uri.setter
    def requested_uri(self, uri: str) -> None:
        """Settable while paused (e.g. a fresh signed URL); resume() then continues."""
        with self._lock:
            if self.status not in (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS):
                raise InvalidStateError(
                    f"requested_uri can only change while paused, not in {self.status.name}"
                )
            check_uri(uri)
            self._store.update(self._rec.guid, uri=uri)
            self._rec.uri = uri

    @property
    def method(self) -> str:
        return self._rec.method

    @property
    def result_file(self) -> Path:
        return self._result

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
        self._store.update(self._rec.guid, cost_policy=value.value)
        self._rec.cost_policy = value.value

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
    def status(self) -> BackgroundTransferStatus:
        return S(self._rec.status)

    @property
    def current_web_error_status(self) -> WebErrorStatus | None:
        value = self._rec.web_error
        return None if value is None else WebErrorStatus(value)

    @property
    def progress(self) -> BackgroundDownloadProgress:
        self._refresh_bytes()
        return BackgroundDownloadProgress(
            self._bytes, self._total, self.status, self._restarted, self._response_changed
        )

    # -- the scheduler's view -------------------------------------------------------
    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.priority.rank, self._rec.seq)

    @property
    def serial_group(self) -> str | None:
        from engine._values import BackgroundTransferBehavior

        name = self._rec.group_name
        if name is None:
            return None
        behavior = BackgroundTransferBehavior(self._store.group_behavior(name, None))
        return name if behavior is BackgroundTransferBehavior.SERIALIZED else None

    # -- starting and waiting ---------------------------------------------------------
    async def start_async(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """Start; resolves on COMPLETED, raises on ERROR, TransferCanceled on cancel."""
        self._begin(Event.START, progress, asyncio.get_running_loop())
        return await self._await_outcome()

    async def attach_async(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """Take over an operation found by get_current_downloads and let it go on."""
        self._begin(Event.ATTACH, progress, asyncio.get_running_loop())
        return await self._await_outcome()

    def start(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """Start without asyncio and return at once; ``wait()`` blocks until the end."""
        self._begin(Event.START, progress, None)
        return self

    def attach(self, progress: ProgressCallback | None = None) -> DownloadOperation:
        """*Beyond*: ``attach_async`` without asyncio; returns at once, then ``wait()``."""
        self._begin(Event.ATTACH, progress, None)
        return self

    def wait(self, timeout: float | None = None) -> DownloadOperation:
        """Block until COMPLETED (returns), ERROR (raises) or cancel (TransferCanceled)."""
        try:
            return self._outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self.result_file}: not finished after {timeout} s") from None
        except TransferError:
            self._acknowledge()
            raise

    async def _await_outcome(self) -> DownloadOperation:
        try:
            return await asyncio.wrap_future(self._outcome)
        except asyncio.CancelledError:
            if self.status not in TERMINAL:
                self.cancel()
            raise
        except TransferError:
            self._acknowledge()
            raise

    def _begin(
        self,
        event: Event,
        progress: ProgressCallback | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Start or attach.  Attaching to an operation this process already runs (or
        just resumed) only adds the callback: there is one download, many watchers."""
        with self._lock:
            if event is Event.START and (self._started or self.status is not S.IDLE):
                raise InvalidStateError(
                    f"start needs an IDLE operation not yet started (this one is "
                    f"{self.status.name}); use attach_async for one found again"
                )
            if progress is not None:
                self._callbacks.append((progress, loop))
            if self._event_loop is None:
                self._event_loop = loop
            if self._started:
                return
            self._started = True
            if self.status is S.ERROR:
                self._fail_outcome(self._stored_error())
                return
            if event is Event.ATTACH and self.status is not S.IDLE:
                self._move(Event.ATTACH)
            if self.status in (S.IDLE, S.RUNNING, *_ENGINE_PAUSE_FOR.values()):
                self._spawn()

    # -- application control ---------------------------------------------------------
    def pause(self) -> None:
        """PAUSED_BY_APPLICATION; the bitmap keeps what arrived."""
        with self._lock:
            if self._rec.method != "GET":
                raise InvalidStateError(f"a {self._rec.method} download cannot be paused")
            self._refuse_while_finishing("pause")
            self._move(Event.PAUSE)
            self._stop_runner()

    def resume(self) -> None:
        """Back to RUNNING from a pause (or from ERROR, e.g. after disk space was freed)."""
        with self._lock:
            was_error = self.status is S.ERROR
            self._move(Event.RESUME)
            if was_error or self._outcome.done():
                self._outcome = concurrent.futures.Future()
                self._store.update(self._rec.guid, acknowledged=0)
            self._started = True
            self._spawn()

    def cancel(self) -> None:
        """CANCELED: stop, remove the partial data; the awaiting call raises TransferCanceled."""
        with self._lock:
            self._refuse_while_finishing("cancel")
            self._move(Event.CANCEL)
            task = self._task
        done = self._on_engine(lambda: self._cleanup_canceled(task))
        if done is not None:
            done.result()

    def _refuse_while_finishing(self, what: str) -> None:
        if self._finishing:
            raise InvalidStateError(f"cannot {what}: {self.result_file} is being completed")

    async def _cleanup_canceled(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        remove_partial(self.result_file)
        self._fail_outcome(TransferCanceled(f"{self.result_file}: canceled", guid=self.guid))

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

    async def _available(self, offset: int, want: int) -> int:
        """Bytes present from ``offset`` (up to ``want``), waiting until there is one.

        Runs on the engine loop.  0 means the end of the result.  Raises the
        operation's error when it ends in ERROR or CANCELED first.
        """
        while True:
            if self.status is S.COMPLETED:
                return max(0, min(want, self._total - offset))
            if self._total and offset >= self._total:
                return 0
            present = self._present_from(offset, want)
            if present:
                return present
            if self.status in (S.ERROR, S.CANCELED):
                raise (
                    self._stored_error()
                    if self.status is S.ERROR
                    else TransferCanceled(f"{self.result_file}: canceled", guid=self.guid)
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            job = self._job
            if job is not None and self._rec.random_access:
                job.prioritize(offset)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if job is not None and self._rec.random_access:
                    job.reader_done(offset)

    def _present_from(self, offset: int, want: int) -> int:
        job = self._job
        if job is not None and job.finishing:
            return 0  # the finishing thread owns the file: wait for COMPLETED
        if job is not None and job.rf is not None and not job.rf.closed:
            ranges = job.rf.ranges()
        elif job is None:
            ranges = self._disk_ranges()
        else:
            return 0
        for start, length in ranges:
            if start <= offset < start + length:
                return min(want, start + length - offset)
        return 0

    def _wake_readers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

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
            job.headers = self._header_lines()

    def _header_lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self._rec.headers]

    # -- what arrived ------------------------------------------------------------------
    def get_response_information(self) -> ResponseInformation | None:
        return self._response

    def get_downloaded_ranges(self) -> list[BackgroundTransferFileRange]:
        return [BackgroundTransferFileRange(o, n) for o, n in self._current_ranges()]

    def _current_ranges(self) -> list[tuple[int, int]]:
        if self.status is S.COMPLETED:
            return [(0, self._total)] if self._total else []
        if self._ranges is not None:
            return list(self._ranges)
        return self._disk_ranges()

    def _disk_ranges(self) -> list[tuple[int, int]]:
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

    def _refresh_bytes(self) -> None:
        job = self._job
        if job is not None and self._task is not None and not self._task.done():
            return  # the ticks keep _bytes current
        if self.status is S.COMPLETED:
            self._bytes = self._total
        elif self._ranges is None and control_path(self.result_file).exists():
            self._bytes = sum(n for _, n in self._disk_ranges())

    # -- transitions ---------------------------------------------------------------------
    def _move(self, event: Event, error: TransferError | None = None) -> BackgroundTransferStatus:
        """Apply the table, persist, then report; the only place a status changes."""
        with self._lock:
            new = next_status(self.status, event)
            fields: dict[str, Any] = {"status": new.value}
            if error is not None:
                fields["web_error"] = (
                    error.web_error_status.value if error.web_error_status is not None else None
                )
                fields["error_message"] = str(error)
            elif new in (S.RUNNING, S.PAUSED_BY_APPLICATION, S.COMPLETED, S.CANCELED):
                fields["web_error"] = None
                fields["error_message"] = None
            if new is S.ERROR:
                fields["acknowledged"] = 0
            if new in TERMINAL:
                self._store.delete(self._rec.guid)  # finished: no row left to find again
            else:
                self._store.update(self._rec.guid, **fields)
            for key, value in fields.items():
                setattr(self._rec, key, value)
        self._report()
        engine_loop().loop.call_soon_threadsafe(self._wake_readers)
        if new in (S.COMPLETED, S.CANCELED, S.ERROR):
            self._settings.ended(self)
        return new

    def _stored_error(self) -> TransferError:
        status = self.current_web_error_status
        message = self._rec.error_message or f"{self.result_file}: failed"
        if status is not None and 300 <= status.value < 600:
            return HttpError(message, status_code=status.value, guid=self.guid)
        return TransportError(message, web_error_status=status, guid=self.guid)

    def _fail_outcome(self, exc: BaseException) -> None:
        if not self._outcome.done():
            self._outcome.set_exception(exc)

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
            self._task = asyncio.current_task()
            await self._runner()

        engine = engine_loop()
        handle = engine.submit(start())
        del handle  # outcome and status carry the result

    def _stop_runner(self) -> None:
        task = self._task
        if task is not None:
            engine_loop().loop.call_soon_threadsafe(task.cancel)

    async def _runner(self) -> None:
        try:
            while self.status not in TERMINAL and self.status not in (
                S.PAUSED_BY_APPLICATION,
                S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS,
                S.ERROR,
            ):
                if await self._wait_for_conditions():
                    continue
                sched = scheduler()
                await sched.admit(self)
                try:
                    if self.status is S.IDLE:
                        self._move(Event.START)
                    elif self.status in _ENGINE_PAUSE_FOR.values():
                        self._move(Event.CONDITIONS_MET)
                    await self._attempt()
                except _Pause as pause:
                    self._move(pause.event)
                finally:
                    sched.release(self)
        except asyncio.CancelledError:
            pass  # pause() or cancel() moved the status already
        except Exception as exc:  # a bug, not the world: fail loudly, never hang awaiters
            if not self._outcome.done():
                self._outcome.set_exception(exc)
            raise

    async def _wait_for_conditions(self) -> bool:
        """True when the network, its cost or the disk hold the operation back (it paused)."""
        blocked = self._blocked()
        if blocked is None:
            return False
        if self.status is not _ENGINE_PAUSE_FOR[blocked]:
            self._move(blocked)
        await asyncio.sleep(self._settings.config.poll_interval)
        return True

    def _blocked(self) -> Event | None:
        host = urllib.parse.urlsplit(self._rec.uri).hostname or ""
        monitor = self._settings.network_monitor
        if not monitor.is_connected(host):
            return Event.NO_NETWORK
        if (
            self.cost_policy is BackgroundTransferCostPolicy.UNRESTRICTED_ONLY
            and monitor.is_metered(host)
        ):
            return Event.COSTED_NETWORK
        if self._settings.disk_reserve_exceeded(self.result_file):
            return Event.SYSTEM_POLICY
        return None

    async def _attempt(self) -> None:
        job = SegmentedDownload(
            self._rec.uri,
            self.result_file,
            config=self._settings.config_for(self._rec),
            headers=self._header_lines(),
            on_progress=self._on_tick,
            request=self._request_options(),
            require_ranges=self._rec.random_access,
        )
        job.finisher = self._finish_verified
        job.on_blocks = self._wake_readers
        self._job = job
        run = asyncio.ensure_future(job.run())
        watch = asyncio.ensure_future(self._watch())
        try:
            done, _ = await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                watch.result()  # raises the _Pause
            await run
        except TransferError as exc:
            self._settle_error(exc)
            return
        finally:
            watch.cancel()
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
            self._on_tick(job.snapshot())
            self._ranges = None
            self._job = None
        self._flush_ranges_event(final=True)
        if not self._outcome.done():
            self._outcome.set_result(self)

    async def _finish_verified(self, finish: Callable[[], Awaitable[Path]]) -> Path:
        """Check the expected checksum on the partial file, then rename and complete.

        A mismatch removes the data (a resume starts over) and raises IntegrityError:
        a file that fails its checksum never appears under the final name.  While the
        rename runs (in a thread), pause() and cancel() are refused: it is too late.
        """
        expected = self.expected_checksum
        if expected is not None:
            algo, digest = expected
            got = await asyncio.to_thread(file_digest, part_path(self.result_file), algo)
            if got != digest:
                remove_partial(self.result_file)
                raise IntegrityError(
                    f"{self.result_file}: {algo} is {got}, expected {digest}", guid=self.guid
                )
        with self._lock:
            if self.status is not S.RUNNING:
                raise asyncio.CancelledError  # paused or cancelled a moment ago
            self._finishing = True
        try:
            done = await finish()
        finally:
            with self._lock:
                self._finishing = False
        job = self._job
        self._total = (job.size if job is not None else None) or self._bytes
        self._bytes = self._total
        self._move(Event.COMPLETE)
        return done

    async def _watch(self) -> None:
        """Raise _Pause when the conditions turn while the download runs."""
        while True:
            await asyncio.sleep(self._settings.config.poll_interval)
            blocked = self._blocked()
            if blocked is not None:
                raise _Pause(blocked)

    def _settle_error(self, exc: TransferError) -> None:
        exc.guid = self.guid
        status = exc.web_error_status
        if status is not None and status in self.recoverable_web_error_statuses:
            self._move(Event.RECOVERABLE_ERROR, exc)
            return
        host = urllib.parse.urlsplit(self._rec.uri).hostname or ""
        if status in _NETWORK_FAILURES and not self._settings.network_monitor.is_connected(host):
            raise _Pause(Event.NO_NETWORK)
        self._move(Event.FAIL, exc)
        self._fail_outcome(exc)

    def _request_options(self) -> RequestOptions:
        body = None
        if self._rec.body_file is not None:
            try:
                body = Path(self._rec.body_file).read_bytes()
            except OSError as exc:
                raise StorageError(
                    exc.errno or 5, f"request body unreadable: {exc.strerror}", self._rec.body_file
                ) from exc
        s = self._settings
        return RequestOptions(
            method=self._rec.method,
            body=body,
            user=s.server_credential.pair if s.server_credential else None,
            proxy=s.proxy,
            proxy_user=s.proxy_credential.pair if s.proxy_credential else None,
        )

    # -- progress and events -----------------------------------------------------------------
    def _on_tick(self, snap: Snapshot) -> None:
        job = self._job
        self._bytes = snap.bytes_received
        self._connections = snap.connections
        if snap.total_bytes_to_receive:
            self._total = snap.total_bytes_to_receive
        self._response_changed = self._response_changed or snap.has_response_changed
        if job is not None:
            if job.restarts > self._restarts_seen:
                self._restarts_seen = job.restarts
                self._restarted = True
                self._pending, self._reported = [], []
                self._pending_restart = True
            if job.last_head is not None:
                head = job.last_head
                headers: dict[str, str] = {}
                for key, value in head.headers:
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
                self._response = ResponseInformation(
                    job.actual_url, headers, bool(job.ranges_ok and job.size), head.status
                )
            if job.rf is not None and not job.rf.closed:
                self._ranges = job.rf.ranges()
        self._flush_ranges_event(final=False)
        self._report()

    def _report(self) -> None:
        """Tell progress callbacks, once per distinct snapshot (ticks repeat themselves)."""
        snap = (self._bytes, self._total, self.status, self._restarted, self._response_changed)
        with self._lock:
            if snap == self._last_reported:
                return
            self._last_reported = snap
        for callback, loop in list(self._callbacks):
            self._deliver(loop, self._call_progress, callback)

    def _call_progress(self, callback: ProgressCallback) -> None:
        callback(self)
        self._restarted = False  # true in the first snapshot after a restart only

    def _deliver(
        self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., None], *args: Any
    ) -> None:
        """Call on the caller's loop when there was one, else on the engine loop."""
        target = loop or engine_loop().loop
        if target.is_closed():
            return
        target.call_soon_threadsafe(fn, *args)

    def _flush_ranges_event(self, *, final: bool) -> None:
        current = self._current_ranges() if final else (self._ranges or [])
        added = subtract_ranges(merge_ranges(current), self._reported)
        with self._lock:
            self._reported = merge_ranges(self._reported + added)
            self._pending = merge_ranges(self._pending + added)
            if self._event_busy or not (self._pending or self._pending_restart):
                return
            if not self.ranges_downloaded:
                self._pending, self._pending_restart = [], False
                return
            self._event_busy = True
            pending, restart = self._pending, self._pending_restart
            self._pending, self._pending_restart = [], False
        self._deliver(self._event_loop, self._raise_ranges_event, pending, restart)

    def _raise_ranges_event(self, pending: list[tuple[int, int]], restart: bool) -> None:
        deferrals: list[Deferral] = []
        lock = threading.Lock()
        open_count = [1]  # the handler call itself holds one

        def release() -> None:
            with lock:
                open_count[0] -= 1
                last = open_count[0] == 0
            if last:
                with self._lock:
                    self._event_busy = False
                self._flush_ranges_event(final=self.status is S.COMPLETED)

        def make() -> Deferral:
            with lock:
                open_count[0] += 1
            deferral = Deferral(release)
            deferrals.append(deferral)
            return deferral

        args = BackgroundDownloadRangesDownloadedEventArgs(
            [BackgroundTransferFileRange(o, n) for o, n in pending], restart, make
        )
        try:
            for handler in self.ranges_downloaded.handlers():
                handler(self, args)
        finally:
            release()


def check_uri(uri: str) -> None:
    """Schemes the engine speaks; anything else is refused before it is stored."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() == "sftp":
        raise InvalidRequestError(f"sftp is not supported yet: {uri!r}")
    if parts.scheme.lower() not in ("http", "https", "ftp", "ftps") or not parts.netloc:
        raise InvalidRequestError(f"not a URL bgtransfer can download: {uri!r}")
    if any(c in uri for c in "\r\n\0 "):
        raise InvalidRequestError(f"URL contains whitespace or control characters: {uri!r}")


def new_guid() -> str:
    return str(uuid.uuid4())


def absolute(path: os.PathLike[str] | str) -> Path:
    return Path(os.path.abspath(os.fspath(path)))
