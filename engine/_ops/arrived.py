"""What arrived of an operation: progress, the ranges present, the response, and the
progress ticks of a running download that feed the callbacks and range events."""

from __future__ import annotations

from typing import cast

from engine._disk.core import RangeFile, control_path, peek
from engine._download.fetch import Snapshot
from engine._download.segmented import SegmentedDownload
from engine._ops.fields import OperationFields
from engine._ops.interfaces import EngineOperation
from engine.errors import ControlFileError, StorageError
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundTransferFileRange,
    BackgroundTransferStatus,
    ResponseInformation,
)

S = BackgroundTransferStatus


class OperationProgress(OperationFields):
    """What arrived, as of the last progress tick or from the control file."""

    @property
    def progress(self) -> BackgroundDownloadProgress:
        self._refresh_bytes()
        return BackgroundDownloadProgress(
            self._bytes, self._total, self.status, self._restarted, self._response_changed
        )

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
                    bool(job.file.ranges_ok and job.file.size),
                )
            rf = job.file.rf
            if rf is not None and not rf.closed:
                self._ranges = rf.ranges()
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

    def _whole(self) -> EngineOperation:
        """This operation as the reporter takes it: every instance is a whole
        ``DownloadOperation``, of which this class is a part."""
        return cast(EngineOperation, self)

    def _report(self) -> None:
        self._reporter.report(self._whole())

    def flush_ranges_event(self, *, final: bool) -> None:
        self._reporter.flush_ranges(self._whole(), final=final)
