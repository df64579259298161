"""An operation's fields: what it is, read from its row of the state database and
written through to it, and what the engine side reads of it
(``engine._ops.interfaces.EngineOperation``).

``DownloadOperation`` (``engine/operation.py``) builds on this class; nothing here
starts, stops or changes the status of a download.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._disk.checksum import parse
from engine._download.segmented import SegmentedDownload
from engine._download.sinks import Seed
from engine._net.ratelimit import Budget
from engine._net.transport import ResponseHead
from engine._ops.interfaces import Pokable
from engine._ops.outcome import Outcome
from engine._ops.reading import Readers
from engine._ops.reporting import Reporter
from engine._ops.scheduler import scheduler
from engine._ops.settings import Settings
from engine._ops.validate import check_header, check_uri
from engine._runtime.loop import engine_loop
from engine._state.oplock import OpLock
from engine._state.store import OpRecord, Store
from engine.errors import (
    HttpError,
    InvalidRequestError,
    InvalidStateError,
    TransferError,
    TransportError,
)
from engine.groups import BackgroundTransferGroup
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferBehavior,
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    ResponseInformation,
)
from engine.values import Event as ApiEvent
from engine.web_error import WebErrorStatus

if TYPE_CHECKING:
    import uuid


S = BackgroundTransferStatus
STATUS_OF = {s.value: s for s in S}
"""Status by stored value: read everywhere, a lookup rather than an Enum call."""

NEW_URI_IN = (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS, S.ERROR)
"""Statuses in which requested_uri may change: nothing is fetching from the old one."""

_RANK = {p.value: p.rank for p in BackgroundTransferPriority}
"""Queue rank by stored priority value: the scheduler sorts by it, a file at a time."""


class OperationFields:
    """The fields of one operation and the properties over them."""

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
    _duplicated = 0
    _dropped: dict[str, str] = {}  # noqa: RUF012 (replaced, never changed in place)
    _budget: Budget | None = None  # its share of the downloader's rate, made at its first run
    _new = False  # made by create_download in this process and not yet run: no files
    _seed: Seed | None = None  # its first range, received already (``seed``)
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
            if self.status not in NEW_URI_IN:
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
    def transfer_group(self) -> BackgroundTransferGroup | None:
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
        own; the downloader's total still applies).  Stored with the operation, so a
        resume in another process (``get_current_downloads``) keeps it; a change applies
        to the connections on the wire."""
        return self._rec.max_rate

    @max_bytes_per_second.setter
    def max_bytes_per_second(self, value: int) -> None:
        if value < 0:
            raise InvalidRequestError("max_bytes_per_second must be 0 (no limit) or more")
        with self._lock:
            if value != self._rec.max_rate:
                self._store.update(self._rec.guid, max_rate=value)
                self._rec.max_rate = value
        if self._budget is not None:
            self._budget.rate = value

    def rate_budget(self) -> Budget:
        """The budget its requests take their rate from (engine loop)."""
        budget = self._budget
        if budget is None:
            budget = self._budget = Budget(self._rec.max_rate, self._settings.budget)
        return budget

    @property
    def status(self) -> BackgroundTransferStatus:
        return STATUS_OF[self._rec.status]  # read everywhere: a lookup, not an Enum call

    @property
    def current_web_error_status(self) -> WebErrorStatus | None:
        value = self._rec.web_error
        return None if value is None else WebErrorStatus(value)

    @property
    def error(self) -> TransferError | None:
        """*Beyond*: what it failed or paused on (ERROR, PAUSED_RECOVERABLE_WEB_ERROR_STATUS),
        its message as stored (secrets in URLs masked); None in any other status."""
        if self._rec.error_message is None or self.status not in NEW_URI_IN[1:]:
            return None
        return self.stored_error()

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

    def job_ended(self) -> None:
        """The run of the download ended, whichever way: nothing of it is live now."""
        self._ranges = None
        self._job = None

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

    def stored_error(self) -> TransferError:
        status = self.current_web_error_status
        message = self._rec.error_message or f"{self.result_file}: failed"
        if status is not None and 300 <= status.value < 600:
            return HttpError(message, status_code=status.value, guid=self.guid)
        return TransportError(message, web_error_status=status, guid=self.guid)

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
