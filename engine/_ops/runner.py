"""The engine side of one operation: the network, cost and disk allow it, the scheduler
admits it, then one SegmentedDownload at a time runs until the operation ends or pauses.

Everything here runs on the engine loop.  Status changes go through the operation's
``move`` (persisted, then reported); this module only decides which event happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

from engine._disk.core import control_path, remove_partial
from engine._disk.space import NeedsSpace, room_for
from engine._download.segmented import SegmentedDownload
from engine._net.transport import RequestOptions
from engine._ops.cross_process import drive
from engine._ops.interfaces import EngineOperation
from engine._ops.scheduler import scheduler
from engine._ops.states import ENGINE_PAUSE_FOR, TERMINAL, Event
from engine._ops.validate import host_of
from engine._runtime.loop import running_loop
from engine._runtime.ticker import ticker
from engine.errors import IntegrityError, TransferError, TransferTimeoutError
from engine.values import BackgroundTransferCostPolicy, BackgroundTransferStatus
from engine.web_error import WebErrorStatus

S = BackgroundTransferStatus
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
"""Failures that mean "no network" when the monitor agrees there is none."""


_PLAIN = RequestOptions()
"""A GET with no body, credentials or proxy (RequestOptions is immutable)."""


class _Pause(Exception):
    """Raised inside the runner when the engine itself must pause the operation."""

    def __init__(self, event: Event) -> None:
        super().__init__(event.value)
        self.event = event


class _Watch:
    """Every poll interval, look at the conditions while the download runs; when they
    turn, remember why and cancel it (the runner's task, which then pauses).  A member
    of the loop's ticker, not a task or a timer of its own: a small file ends long
    before the first look."""

    def __init__(self, runner: Runner, run: asyncio.Task[None]) -> None:
        self._runner = runner
        self._run = run
        self.blocked: Event | None = None
        self._ticker = ticker(runner.op.settings.config.poll_interval)
        self._ticker.join(self, self._look)

    def _look(self) -> None:
        self.blocked = self._runner._blocked()
        if self.blocked is not None:
            self._run.cancel()
            self.stop()

    def stop(self) -> None:
        self._ticker.leave(self)


class _Deadline:
    """``max_time`` (curl's ``--max-time``): once it has passed, the attempt running
    is cancelled and the next one never starts; the operation fails with a timeout."""

    def __init__(self, seconds: float, task: asyncio.Task[None]) -> None:
        self.seconds = seconds
        self.passed = False
        self.attempting = False
        self._task = task
        self._timer = running_loop().call_later(seconds, self._pass)

    def _pass(self) -> None:
        self.passed = True
        if self.attempting:
            self._task.cancel()

    def error(self, op: EngineOperation) -> TransferTimeoutError:
        """No WebErrorStatus: the bound is the caller's, not the network failing."""
        return TransferTimeoutError(
            f"{op.result_file}: not complete within the maximum time ({self.seconds:g} s)"
        )

    def cancel(self) -> None:
        self._timer.cancel()


def _leaked(op: EngineOperation) -> bool:
    """A CancelledError reached ``Runner.run`` though nobody cancelled its task and
    the operation still runs: pause() and cancel() move the status before they cancel,
    and the engine's shutdown cancels the task itself (``cancelling()``)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return cancelling is not None and not cancelling() and op.status is S.RUNNING


def _fail_internal(op: EngineOperation, exc: BaseException) -> None:
    """Fail ``op`` for a bug, loudly: never hang its awaiters, and never leave RUNNING
    in the store, which a later ``resume --all`` trips on."""
    error = TransferError(f"{op.result_file}: internal error: {exc!r}")
    error.__cause__ = exc  # the bug's own traceback, for its report
    with contextlib.suppress(Exception):  # not legal from here: the status stays
        op.move(Event.FAIL, error)
    if not op.outcome.done():
        op.outcome.set_exception(error)


class Runner:
    """Runs ``op`` on the engine loop until it completes, fails, or pauses."""

    def __init__(self, op: EngineOperation) -> None:
        self.op = op
        self._host = host_of(op.record.uri)
        self._poked: asyncio.Event | None = None
        self._watch: _Watch | None = None
        self._deadline: _Deadline | None = None

    def poke(self) -> None:
        """The application changed a condition (its cost policy): look again now, not
        at the next poll, whether the operation may run (or must pause)."""
        if self._poked is not None:
            self._poked.set()
        elif self._watch is not None:
            self._watch._look()

    async def run(self) -> None:
        op = self.op
        if not op.oplock.acquire():
            op.give_up_elsewhere()
            return
        board = drive(op)  # while this process drives it, another may ask for a cancel
        op.runner = self
        max_time = op.settings.config.max_time
        if max_time is not None:
            task = asyncio.current_task(running_loop())
            assert task is not None
            self._deadline = _Deadline(max_time, task)
        try:
            while op.status not in TERMINAL and op.status not in (
                S.PAUSED_BY_APPLICATION,
                S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS,
                S.ERROR,
            ):
                if await self._wait_for_conditions():
                    continue
                sched = scheduler()
                await sched.admit(op)
                try:
                    if op.status is S.IDLE:
                        op.move(Event.START)
                    elif op.status in ENGINE_PAUSE_FOR.values():
                        op.move(Event.CONDITIONS_MET)
                    await self._attempt()
                except _Pause as pause:
                    op.move(pause.event)
                finally:
                    sched.release(op)
        except asyncio.CancelledError:  # pause() or cancel() moved the status already,
            if _leaked(op):  # unless no one cancelled: a bug below, which would hang awaiters
                _fail_internal(op, RuntimeError("a CancelledError escaped the download"))
        except Exception as exc:  # a bug, not the world
            _fail_internal(op, exc)
            raise
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
            if op.runner is self:
                op.runner = None
            board.leave(op)
            op.oplock.release()

    async def _wait_for_conditions(self) -> bool:
        """True when the network, its cost or the disk hold the operation back (it paused)."""
        op = self.op
        blocked = self._blocked()
        if blocked is None:
            return False
        if op.status is not ENGINE_PAUSE_FOR[blocked]:
            op.move(blocked)
        poked = self._poked = asyncio.Event()
        try:
            await asyncio.wait_for(poked.wait(), op.settings.config.poll_interval)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            pass
        finally:
            self._poked = None
        return True

    def _blocked(self) -> Event | None:
        op = self.op
        host = self._host
        monitor = op.settings.network_monitor
        if not monitor.is_connected(host):
            return Event.NO_NETWORK
        if op.cost_policy is BackgroundTransferCostPolicy.UNRESTRICTED_ONLY and monitor.is_metered(
            host
        ):
            return Event.COSTED_NETWORK
        if op.settings.disk_reserve_exceeded(op.record.result_file):
            return Event.SYSTEM_POLICY
        need = op.space_needed
        if need:
            if not room_for(op.record.result_file, need, op.settings.free_space_reserve):
                return Event.SYSTEM_POLICY
            op.need_space(0)  # the next attempt allocates it (or finds it taken again)
        return None

    async def _attempt(self) -> None:
        op = self.op
        job = SegmentedDownload(
            op.record.uri,
            op.record.result_file,
            config=op.settings.config_for(op.record),
            headers=op.header_lines(),
            on_progress=op.on_tick,
            request=self._request_options(),
            require_ranges=op.record.random_access,
            mirrors=op.record.sources,
        )
        job.loose = op.record.checksum is not None
        job.finisher = self._finish_verified
        job.new = op.take_new()
        job.seed = op.take_seed()
        job.rank = op.rank
        job.reserve = op.settings.free_space_reserve
        job.budget = op.rate_budget()
        job.on_blocks = op.wake_readers
        job.on_resumable = lambda: op.save_running(now=True)
        if (
            not job.new
            and op.bytes_received > 0
            and not os.path.lexists(control_path(op.result_file))
        ):
            op.note_restart()  # data had arrived, and nothing of it can be resumed
        op.new_job(job)
        task = asyncio.current_task(running_loop())
        assert task is not None
        watch = self._watch = _Watch(self, task)
        deadline = self._deadline
        try:
            try:
                if deadline is not None:
                    if deadline.passed:
                        raise deadline.error(op)
                    deadline.attempting = True
                await job.run()
            except asyncio.CancelledError:
                over = deadline is not None and deadline.passed
                if (watch.blocked is None and not over) or op.status is not S.RUNNING:
                    raise  # pause() or cancel() (they move the status first)
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
                if over:
                    assert deadline is not None
                    raise deadline.error(op) from None
                assert watch.blocked is not None
                raise _Pause(watch.blocked) from None
            finally:
                if deadline is not None:
                    deadline.attempting = False
        except NeedsSpace as exc:  # its declared size fits, not now: wait for room
            op.need_space(exc.size)
            raise _Pause(Event.SYSTEM_POLICY) from None
        except TransferError as exc:
            self._settle_error(exc)
            return
        finally:
            self._watch = None
            watch.stop()  # (job.run reported its last progress as it ended)
            op.job_ended()
        op.flush_ranges_event(final=True)
        op.settle_outcome(None)

    async def _finish_verified(self, finish: Callable[[], Awaitable[None]]) -> None:
        """Check the expected checksum on the partial file, then rename and complete.

        A mismatch removes the data (a resume starts over) and raises IntegrityError:
        a file that fails its checksum never appears under the final name.  While the
        rename runs (in a thread), pause() and cancel() are refused: it is too late.
        """
        op = self.op
        expected = op.expected_checksum
        job = op.job
        if expected is not None and job is not None:
            algo, digest = expected
            got = await job.file.digest(algo)
            if got != digest:
                remove_partial(op.result_file)
                raise IntegrityError(
                    f"{op.result_file}: {algo} is {got}, expected {digest}", guid=op.guid
                )
        with op.finishing():
            await finish()
        op.mark_complete(job.file.size if job is not None else None)

    def _settle_error(self, exc: TransferError) -> None:
        op = self.op
        exc.guid = op.guid
        status = exc.web_error_status
        if status is not None and status in op.recoverable_web_error_statuses:
            op.move(Event.RECOVERABLE_ERROR, exc)
            return
        host = self._host
        if status in _NETWORK_FAILURES and not op.settings.network_monitor.is_connected(host):
            raise _Pause(Event.NO_NETWORK)
        op.move(Event.FAIL, exc)
        op.fail_outcome(exc)

    def _request_options(self) -> RequestOptions:
        op = self.op
        body = op.record.body_file  # streamed by each request (_transport._send_body)
        s = op.settings
        if (
            body is None
            and op.record.method == "GET"
            and s.server_credential is None
            and s.proxy is None
            and s.proxy_credential is None
        ):
            return _PLAIN  # a mirror's every file: no options to build
        return RequestOptions(
            method=op.record.method,
            body_file=body,
            user=s.server_credential.pair if s.server_credential else None,
            proxy=s.proxy,
            proxy_user=s.proxy_credential.pair if s.proxy_credential else None,
        )
