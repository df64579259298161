"""One object per process, made on first use: the engine loop, the C filer."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get()`` makes the object once; a forked child makes its own, because the
    threads behind the parent's did not survive the fork."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: T | None = None
        os.register_at_fork(after_in_child=self._forget)

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._value = None
