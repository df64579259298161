"""The engine thread: one asyncio loop (uvloop when installed) per process, owning libcurl.

Callers on any thread hand it coroutines with ``submit``; transfers go on while the
caller's thread does other work.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from engine._runtime.once import PerProcess

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or uvloop not installed
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_SETTLE_AT_EXIT = 5.0
"""Seconds the interpreter's exit waits for the engine loop's cancelled work to end."""


class EngineLoop:
    """A daemon thread running an event loop until the interpreter exits."""

    def __init__(self) -> None:
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="bgtransfer-engine", daemon=True)
        self._thread.start()
        self.ident = self._thread.ident
        global _current
        _current = (self.ident, self.loop)
        atexit.register(self._stop_at_exit)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _stop_at_exit(self) -> None:
        """Let cancelled work end (a pause's or a cancel's clean-up: the stages written,
        the partial data removed), then stop the loop and join its thread.

        A daemon thread left polling outlives the interpreter: an event after it is
        gone (a parked connection's server hanging up, say) made uvloop call
        PyGILState_Ensure on a finalized runtime, and the process died of SIGSEGV
        after it had printed its last line (one exit in seven to twenty, after a
        cancel from another process).  Work that was not cancelled is left as a kill leaves it."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return
        # a clean-up stuck in a system call past the timeout: stop all the same
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.submit(_settle()).result(_SETTLE_AT_EXIT)
        with contextlib.suppress(RuntimeError):  # the loop was closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_SETTLE_AT_EXIT)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the engine loop; the result is a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def _being_cancelled(task: asyncio.Task[Any]) -> bool:
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+; 3.10 cannot tell
    return bool(cancelling is not None and cancelling())


def being_cancelled() -> bool:
    """Whether the current task was asked to cancel (a CancelledError it got may be of
    a future it awaited, cancelled by someone else)."""
    task = asyncio.current_task()
    return task is not None and _being_cancelled(task)


async def _settle() -> None:
    """Wait for the tasks being cancelled on this loop to end."""
    me = asyncio.current_task()
    ending = [t for t in asyncio.all_tasks() if t is not me and _being_cancelled(t)]
    if ending:
        await asyncio.wait(ending)


_engine = PerProcess(EngineLoop)

_current: tuple[int | None, asyncio.AbstractEventLoop | None] = (None, None)
"""The engine thread's ident and loop, once it runs: engine_here and running_loop are
asked a dozen times a small file, and this is one tuple to read."""


def _forget_current() -> None:
    global _current
    _current = (None, None)  # a forked child has no engine thread


os.register_at_fork(after_in_child=_forget_current)


def engine_loop() -> EngineLoop:
    """The process's engine loop, started on first use."""
    return _engine.get()


def engine_here() -> asyncio.AbstractEventLoop | None:
    """The engine loop when called on the engine thread, else None (never starts it)."""
    ident, loop = _current
    return loop if ident == threading.get_ident() else None


def running_loop() -> asyncio.AbstractEventLoop:
    """The running loop, like ``asyncio.get_running_loop``, which on Python 3.11 makes
    a getpid system call each time (its check for a fork): the engine's own code asks
    ten times a small file, on the engine thread, where the answer is known."""
    ident, loop = _current
    if loop is not None and ident == threading.get_ident():
        return loop
    return asyncio.get_running_loop()


class PerLoop(Generic[K, V]):
    """A dict for each event loop, gone with its loop (the tickers of each interval,
    the cancel boards of each state database).  The loop asked about last is
    remembered: a weak dictionary's lookup makes a weak reference each time, and the
    one engine loop asks a few times a small file."""

    def __init__(self) -> None:
        self._all: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[K, V]] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Callable[[], asyncio.AbstractEventLoop | None], dict[K, V]] = (
            lambda: None,
            {},
        )

    def here(self) -> dict[K, V]:
        """The running loop's dict."""
        loop = running_loop()
        last, mine = self._last
        if last() is not loop:
            found = self._all.get(loop)
            if found is None:
                found = self._all[loop] = {}
            mine = found
            self._last = (weakref.ref(loop), mine)
        return mine


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the engine's own loop and block until it returns.

    Code that drives many operations (a mirror of thousands of small files) is mostly
    calls into the engine and callbacks out of it.  From another thread every one of
    them hands the GIL over and waits to get it back; on the engine's loop they are
    plain calls.  Like ``asyncio.run``, a Ctrl-C (KeyboardInterrupt) cancels ``main``,
    waits for it to unwind, and is raised again.  Note that cancelling a task that
    awaits ``start_async`` cancels its download: code that must pause instead awaits
    something else (see ``bgtransfer mirror``).
    """
    engine = engine_loop()
    if threading.current_thread() is engine.thread:
        raise RuntimeError("run() cannot be called from the engine loop itself")
    unwound = threading.Event()

    async def guarded() -> T:
        try:
            return await main
        finally:
            unwound.set()

    future = engine.submit(guarded())
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        unwound.wait()
        raise
