"""What the engine side needs from an operation.

``DownloadOperation`` (``engine/operation.py``) is the API a caller holds; the modules
of ``engine/_ops`` (the runner, the reporter, the readers, the cross-process cancel,
the result streams) and the background service drive it through this interface
only, never through its private fields.  Keeping the interface here, below the
operation, is what lets those modules be imported by ``operation.py`` without an
import circle: they know the shape of an operation, not its class.

Everything here is for the engine, not for applications: the API reference lists
what a caller may use.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine._net.ratelimit import Budget
from engine._ops.outcome import Outcome
from engine._ops.scheduler import Schedulable
from engine._ops.states import Event
from engine._state.oplock import OpLock
from engine._state.store import OpRecord, Store
from engine.errors import ResultFileInUseError, TransferCanceled, TransferError
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferCostPolicy,
    BackgroundTransferStatus,
)
from engine.values import Event as ApiEvent
from engine.web_error import WebErrorStatus

if TYPE_CHECKING:
    from engine._download.fetch import Snapshot
    from engine._download.segmented import SegmentedDownload
    from engine._download.sinks import Seed
    from engine._ops.settings import Settings


class Pokable(Protocol):
    """What drives an operation while it runs (``engine._ops.runner.Runner``)."""

    def poke(self) -> None:
        """A condition changed: look again now whether the operation may run."""


class EngineOperation(Schedulable, Protocol):
    """One operation as the engine side sees it (the scheduler's view included)."""

    # -- what it is (the API's own properties) -----------------------------------------
    @property
    def guid(self) -> uuid.UUID: ...
    @property
    def result_file(self) -> Path: ...
    @property
    def status(self) -> BackgroundTransferStatus: ...
    @property
    def cost_policy(self) -> BackgroundTransferCostPolicy: ...
    @property
    def expected_checksum(self) -> tuple[str, str] | None: ...

    recoverable_web_error_statuses: set[WebErrorStatus]
    ranges_downloaded: ApiEvent[BackgroundDownloadRangesDownloadedEventArgs]

    def cancel(self) -> None: ...

    # -- what it is made of ------------------------------------------------------------
    @property
    def record(self) -> OpRecord:
        """Its row of the state database, as this process last wrote or read it."""

    @property
    def settings(self) -> Settings:
        """What it shares with the other operations of its downloader."""

    @property
    def store(self) -> Store:
        """The state database it lives in."""

    @property
    def oplock(self) -> OpLock:
        """The lock that makes one process at a time drive it."""

    @property
    def outcome(self) -> Outcome[None]:
        """Settled once, when it completes, fails or is cancelled."""

    @property
    def runner(self) -> Pokable | None:
        """What drives it on the engine loop now, if anything."""

    @runner.setter
    def runner(self, runner: Pokable | None) -> None: ...
    @property
    def job(self) -> SegmentedDownload | None:
        """The run of the download in progress, if any."""

    # -- status and outcome ------------------------------------------------------------
    def move(self, event: Event, error: TransferError | None = None) -> BackgroundTransferStatus:
        """Apply the status table, persist, then report: the only way a status changes."""

    def fail_outcome(self, exc: BaseException) -> None:
        """Settle the outcome with ``exc`` once the status that goes with it is durable."""

    def settle_outcome(self, exc: BaseException | None) -> None:
        """Settle the outcome (None: completed) once its status is durable."""

    def give_up_elsewhere(self) -> None:
        """Another process drives it: this run ends before it began."""

    def elsewhere_error(self) -> ResultFileInUseError:
        """The error that says another process drives it."""

    def stored_error(self) -> TransferError:
        """The error it failed with, as stored."""

    def canceled_error(self) -> TransferCanceled:
        """The error that says it was cancelled."""

    def save_running(self, *, now: bool = False) -> None:
        """Write the RUNNING that ``move`` leaves unwritten for a while."""

    def finishing(self) -> contextlib.AbstractContextManager[None]:
        """Held while the finished file is renamed: pause and cancel are refused."""

    def mark_complete(self, size: int | None) -> None:
        """Every byte is in place under the final name: COMPLETED."""

    # -- a run of the download ---------------------------------------------------------
    @property
    def space_needed(self) -> int:
        """The declared size it waits to have room for, else 0."""

    def need_space(self, size: int) -> None:
        """Wait until ``size`` bytes fit (0: they fit now)."""

    def take_new(self) -> bool:
        """True once: made in this process and never run, so no files are left to find."""

    def take_seed(self) -> Seed | None:
        """Its first range, received already, once (``DownloadOperation.seed``)."""

    def rate_budget(self) -> Budget:
        """The budget its requests take their rate from (engine loop)."""

    def rank(self) -> int:
        """The priority rank its requests wait for a connection slot with."""

    def header_lines(self) -> list[str]:
        """Its request headers as ``Name: value`` lines."""

    def new_job(self, job: SegmentedDownload) -> None:
        """A run of the download begins."""

    def job_ended(self) -> None:
        """The run of the download ended (whichever way)."""

    def note_restart(self) -> None:
        """The download started over from zero."""

    def on_tick(self, snap: Snapshot) -> None:
        """A progress tick of the running download."""

    # -- what arrived ------------------------------------------------------------------
    @property
    def bytes_received(self) -> int:
        """Body bytes received, as of the last tick."""

    @property
    def total_bytes(self) -> int:
        """The size of the result, 0 while unknown."""

    @property
    def progress(self) -> BackgroundDownloadProgress:
        """Progress now (looks at the control file when nothing runs)."""

    @property
    def last_progress(self) -> BackgroundDownloadProgress:
        """Progress as of the last tick, without looking at the disk."""

    def progress_told(self) -> None:
        """A progress callback was told: its restart and new-response flags are spent."""

    def live_ranges(self) -> list[tuple[int, int]]:
        """The ranges present as of the last tick (none before the first)."""

    def current_ranges(self) -> list[tuple[int, int]]:
        """The ranges present now, the control file's when nothing runs."""

    def disk_ranges(self) -> list[tuple[int, int]]:
        """The ranges an earlier run left in the control file."""

    def flush_ranges_event(self, *, final: bool) -> None:
        """Raise ``ranges_downloaded`` for what arrived since the last one."""

    def wake_readers(self) -> None:
        """Let every read waiting for bytes look again."""

    async def available(self, offset: int, want: int) -> int:
        """Bytes present from ``offset`` (up to ``want``), waiting for one (engine loop)."""
