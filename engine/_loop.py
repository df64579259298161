"""The engine thread: one asyncio loop (uvloop when installed) per process, owning libcurl.

Callers on any thread hand it coroutines with ``submit``; transfers go on while the
caller's thread does other work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_engine: EngineLoop | None = None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or uvloop not installed
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EngineLoop:
    """A daemon thread running an event loop forever."""

    def __init__(self) -> None:
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="bgtransfer-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the engine loop; the result is a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def engine_loop() -> EngineLoop:
    """The process's engine loop, started on first use."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = EngineLoop()
        return _engine
