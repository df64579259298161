"""Telling the application: throttled progress callbacks and ``ranges_downloaded`` events.

Callbacks run on the caller's loop when there was one at start/attach, else on the
engine loop.  Range events are serialised and coalesced: none is raised while a
handler runs or a deferral it took is open; what arrives meanwhile comes merged in
the next event.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, cast

from engine._ops.interfaces import EngineOperation
from engine._runtime.loop import engine_here, engine_loop
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferFileRange,
    BackgroundTransferStatus,
    Deferral,
    merge_ranges,
    subtract_ranges,
)

S = BackgroundTransferStatus
ProgressCallback = Callable[[Any], "Awaitable[None] | None"]
"""``progress(op)``: a plain function, or an ``async def`` run as a task of the loop it is
delivered on (C#'s ``async void`` handler): the next report does not wait for it."""

_running: set[asyncio.Future[None]] = set()
"""Handler coroutines still running: a task only the loop refers to may be collected."""


def run_handler(result: Awaitable[None] | None, done: Callable[[], None] | None = None) -> bool:
    """Run what an ``async def`` handler returned as a task of the running loop, and
    call ``done`` when it ends; its exception goes to the loop's exception handler,
    as a plain handler's does.  False (and nothing run) for a plain handler's None."""
    if result is None or not inspect.isawaitable(result):
        return False
    task = asyncio.ensure_future(result)
    _running.add(task)

    def ended(fut: asyncio.Future[None]) -> None:
        _running.discard(fut)
        try:
            if not fut.cancelled() and (exc := fut.exception()) is not None:
                fut.get_loop().call_exception_handler(
                    {"message": "exception in a bgtransfer event handler", "exception": exc}
                )
        finally:
            if done is not None:
                done()

    task.add_done_callback(ended)
    return True


class Reporter:
    """The progress callbacks and range events of one operation.  The operation passes
    itself in (and a queued call carries it): holding it here made a cycle that only
    the collector freed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[tuple[ProgressCallback, asyncio.AbstractEventLoop | None]] = []
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._last_reported: BackgroundDownloadProgress | None = None
        self._reported: list[tuple[int, int]] = []
        self._pending: list[tuple[int, int]] = []
        self._pending_restart = False
        self._event_busy = False

    def watch(
        self, progress: ProgressCallback | None, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Add a progress callback; the first caller's loop also receives range events."""
        if progress is not None:
            self._callbacks.append((progress, loop))
        if self._event_loop is None:
            self._event_loop = loop

    def restarted(self) -> None:
        """The content started over: earlier ranges no longer count, say so once."""
        with self._lock:
            self._pending, self._reported = [], []
            self._pending_restart = True

    def report(self, op: EngineOperation) -> None:
        """Tell progress callbacks, once per distinct snapshot (ticks repeat themselves)."""
        if not self._callbacks:
            return  # nobody asked (a quiet mirror): no snapshot to make
        snap = op.last_progress
        with self._lock:
            if snap == self._last_reported:
                return
            self._last_reported = snap
        for callback, loop in list(self._callbacks):
            self._deliver(loop, self._call_progress, callback, op)

    def _call_progress(self, callback: ProgressCallback, op: EngineOperation) -> None:
        """``op`` travels with the queued call: a download nobody holds (started with a
        callback and dropped) stays alive until its last report is told."""
        run_handler(callback(op))
        op.progress_told()

    def _deliver(
        self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., None], *args: Any
    ) -> None:
        """Call on the caller's loop when there was one, else on the engine loop."""
        target = loop or engine_loop().loop
        if target.is_closed():
            return
        if engine_here() is target:
            target.call_soon(fn, *args)  # no wake-up write: the loop is the caller
        else:
            target.call_soon_threadsafe(fn, *args)

    def flush_ranges(self, op: EngineOperation, *, final: bool) -> None:
        current = op.current_ranges() if final else op.live_ranges()
        if not current and not self._pending and not self._pending_restart:
            return  # nothing to add, nothing owed (a small file's ticks before its end)
        if not op.ranges_downloaded:
            with self._lock:
                if not self._event_busy:  # nobody to tell: what arrived counts as told
                    self._reported = merge_ranges(self._reported + current)
                    self._pending, self._pending_restart = [], False
                    return
        added = subtract_ranges(merge_ranges(current), self._reported)
        with self._lock:
            self._reported = merge_ranges(self._reported + added)
            self._pending = merge_ranges(self._pending + added)
            if self._event_busy or not (self._pending or self._pending_restart):
                return
            if not op.ranges_downloaded:
                self._pending, self._pending_restart = [], False
                return
            self._event_busy = True
            pending, restart = self._pending, self._pending_restart
            self._pending, self._pending_restart = [], False
        self._deliver(self._event_loop, self._raise_ranges_event, pending, restart, op)

    def _raise_ranges_event(
        self, pending: list[tuple[int, int]], restart: bool, op: EngineOperation
    ) -> None:
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
                self.flush_ranges(op, final=op.status is S.COMPLETED)

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
            for handler in op.ranges_downloaded.handlers():
                result = handler(cast(Any, op), args)  # the sender: the DownloadOperation
                if result is not None and inspect.isawaitable(result):
                    run_handler(result, make().complete)  # held until the coroutine returns
        finally:
            release()
