"""The awaitable that ``start_async`` and ``attach_async`` return.

Windows starts a download when ``StartAsync()`` is called and cancels it when the
returned operation is cancelled, even through a token that was cancelled before
anything ran (the BackgroundTransfer sample cancels the downloads it finds exactly
so).  A Python coroutine cancelled before its first step never runs a line of its
body, so an ``async def start_async`` would leave such a download IDLE or RUNNING.
This coroutine object runs the body lazily, as any coroutine (``asyncio.run(op.
start_async())`` needs no loop at the call), and turns a cancel that arrives before
the first step into a cancel of the download.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Starting(Coroutine[Any, Any, T]):
    """A coroutine that runs ``body()`` when first stepped; a CancelledError thrown in
    before that calls ``cancel_unstarted`` and is raised."""

    def __init__(
        self,
        body: Callable[[], Coroutine[Any, Any, T]],
        cancel_unstarted: Callable[[], None],
    ) -> None:
        self._body = body
        self._cancel_unstarted = cancel_unstarted
        self._inner: Coroutine[Any, Any, T] | None = None
        self._closed = False

    def __await__(self) -> Generator[Any, None, T]:
        return self  # the coroutine protocol: its own iterator, with send and throw

    def __iter__(self) -> Starting[T]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        if self._inner is None:
            if self._closed:
                raise RuntimeError("cannot reuse an already awaited start_async()")
            self._inner = self._body()
        return self._inner.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        exc = typ if isinstance(typ, BaseException) else (typ() if val is None else val)
        if self._inner is None:
            self._closed = True
            if isinstance(exc, asyncio.CancelledError):
                self._cancel_unstarted()
            raise exc
        return self._inner.throw(exc)

    def close(self) -> None:
        self._closed = True
        if self._inner is not None:
            self._inner.close()

    def __del__(self) -> None:
        if self._inner is None and not self._closed:  # as Python says of a plain coroutine
            warnings.warn(
                "start_async()/attach_async() was never awaited: the download did not start",
                RuntimeWarning,
                stacklevel=2,
            )
