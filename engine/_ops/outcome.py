"""An operation's outcome: set once on the engine thread, waited for from any thread.

It is the part of ``concurrent.futures.Future`` the engine uses (``result`` with a
timeout, ``exception``, ``done``, done-callbacks), made for every operation.  The
Future built a ``threading.Condition`` for each (an RLock and a Python-level
__init__) and took it again at every call: with the calls a small file makes, over
300 bytecodes of its 7000.  Here a plain lock guards the state, and a
``threading.Event`` is made only when a thread actually blocks in ``result``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")

_PENDING, _RESULT, _EXCEPTION = 0, 1, 2
_log = logging.getLogger(__name__)


class NotSettled(TimeoutError):
    """The wait's own timeout ran out: never the outcome itself (a transfer's own
    timeout is a ``TimeoutError`` too, and must not be taken for this one)."""


class Outcome(Generic[T]):
    """A value or an exception, set once."""

    __slots__ = ("_callbacks", "_event", "_lock", "_state", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _PENDING
        self._value: T | BaseException | None = None
        self._callbacks: list[Callable[[Outcome[T]], None]] = []
        self._event: threading.Event | None = None

    def done(self) -> bool:
        return self._state != _PENDING

    def set_result(self, value: T) -> None:
        self._settle(_RESULT, value)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(_EXCEPTION, exc)

    def _settle(self, state: int, value: T | BaseException) -> None:
        with self._lock:
            if self._state != _PENDING:
                raise RuntimeError("the outcome is already settled")
            self._value = value
            self._state = state
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for fn in callbacks:
            self._call(fn)

    def add_done_callback(self, fn: Callable[[Outcome[T]], None]) -> None:
        """Call ``fn(self)`` once settled: at once if it is, else on the settling thread."""
        with self._lock:
            if self._state == _PENDING:
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _call(self, fn: Callable[[Outcome[T]], None]) -> None:
        try:
            fn(self)
        except Exception:  # as concurrent.futures does: one callback cannot stop the rest
            _log.exception("exception calling a callback of %r", self)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception it was settled with, None for a value (waits like ``result``)."""
        self._wait(timeout)
        return cast(BaseException, self._value) if self._state == _EXCEPTION else None

    def result(self, timeout: float | None = None) -> T:
        """The value; raises the exception it was settled with, or NotSettled."""
        self._wait(timeout)
        if self._state == _EXCEPTION:
            raise cast(BaseException, self._value)
        return cast(T, self._value)

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        with self._lock:
            if self._state != _PENDING:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise NotSettled(f"not settled within {timeout} s")
