"""DownloadOperation: one persisted download, its status machine, progress and events.

Theory of operation
-------------------
The object lives on the caller's side; the work runs on the engine loop.  Every
status change goes through ``move``: the table in ``engine._ops.states`` decides,
the state database records it, and only then are progress callbacks told.  Calls
that change the status (``pause``, ``resume``, ``cancel``) do the transition at once
on the calling thread (so an illegal call raises there and changes nothing) and leave
the engine loop to stop or start the work.

While the operation runs, a ``Runner`` (``runner``, a task on the engine loop)
waits for the network, its cost policy and free disk to allow it, waits for the
scheduler, then drives a ``SegmentedDownload`` whose progress ticks
(``engine._ops.arrived``) feed the throttled progress callbacks and the
``ranges_downloaded`` events (``engine._ops.reporting``); reads of the result park in
``engine._ops.reading`` until their bytes arrive.  An outcome future resolves once,
when the operation completes, fails or is cancelled; ``start_async``,
``attach_async`` and ``wait`` all wait on it.  The runner and the others see the
operation through ``engine._ops.interfaces.EngineOperation`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from engine._disk.core import remove_partial
from engine._ops.arrived import OperationProgress
from engine._ops.cross_process import ask_to_cancel
from engine._ops.live import reorder_group
from engine._ops.outcome import NotSettled, Outcome
from engine._ops.runner import Runner
from engine._ops.scheduler import scheduler
from engine._ops.starting import Starting
from engine._ops.states import ENGINE_PAUSE_FOR, TERMINAL, Event, next_status
from engine._ops.streams import ResultStream
from engine._runtime.loop import engine_here, engine_loop, running_loop
from engine.errors import (
    InvalidStateError,
    ResultFileInUseError,
    TransferCanceled,
    TransferError,
)
from engine.values import (
    BackgroundTransferStatus,
)

if TYPE_CHECKING:
    from engine._download.sinks import Seed


S = BackgroundTransferStatus
ProgressCallback = Callable[["DownloadOperation"], "Awaitable[None] | None"]
"""``progress(op)``: a plain function, or an ``async def`` run as a task of the loop
it is delivered on (C#'s ``async void`` handler): the next report does not wait for it."""


_CLEARS_ERROR = (S.RUNNING, S.PAUSED_BY_APPLICATION, S.COMPLETED, S.CANCELED)
"""Statuses that leave no web error behind (a tuple: a set would hash an Enum member,
a Python-level call)."""


class DownloadOperation(OperationProgress):
    """One download: created by ``BackgroundDownloader.create_download`` or found again.

    What it is and the fields the engine side reads are ``OperationFields``
    (``engine/_ops/fields.py``); what arrived is ``OperationProgress``
    (``engine/_ops/arrived.py``); this class runs it: start, wait, pause, resume,
    cancel, and its status changes."""

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

    def seed(self, seed: Seed) -> None:
        """*Beyond*: the first range of its file, received already (by a bulk job's
        small-file request): its run starts by keeping it as that range, so those
        bytes are not fetched again.  Before ``start``."""
        self._seed = seed
        self._new = False  # its run looks for the range file the seed becomes

    def take_seed(self) -> Seed | None:
        """The seed, once (its first attempt keeps it)."""
        seed, self._seed = self._seed, None
        return seed

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
        if self._rec.group_name is None:
            return
        reorder_group(self._settings, self._rec.group_name, self._rec.guid)
        self._on_engine(lambda: scheduler().pump())

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
