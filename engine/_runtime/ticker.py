"""One timer per loop and interval for every download's periodic work.

Each download looks at its progress every 0.2 s and at its conditions (network,
cost, disk) every poll interval.  A timer each meant two ``call_later`` and two
cancels for every small file, which ends long before the first tick.  Members of a
``Ticker`` share one timer instead: joining and leaving are a dict operation, and the
timer stops while nobody is a member.  A member's first call comes within one
interval of joining, not exactly one interval after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from engine._runtime.loop import PerLoop, running_loop


class Ticker:
    """Calls each member's function every ``interval`` seconds on the loop it was
    joined on (it keeps no reference to the loop: see ``ticker``)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._members: dict[Hashable, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def join(self, key: Hashable, fn: Callable[[], None]) -> None:
        self._members[key] = fn
        if self._timer is None:
            self._timer = running_loop().call_later(self._interval, self._fire)

    def leave(self, key: Hashable) -> None:
        self._members.pop(key, None)
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        for key, fn in list(self._members.items()):
            if self._members.get(key) is not fn:
                continue  # left (or joined again) during this round
            try:
                fn()
            except Exception as exc:  # reported like a timer's, and only its ticks stop
                self._members.pop(key, None)
                loop.call_exception_handler(
                    {"message": "exception in a periodic callback", "exception": exc}
                )
        if self._members and self._timer is None:
            self._timer = loop.call_later(self._interval, self._fire)


_tickers: PerLoop[float, Ticker] = PerLoop()


def ticker(interval: float) -> Ticker:
    """The running loop's ticker for ``interval`` (gone with its loop)."""
    mine = _tickers.here()
    found = mine.get(interval)
    if found is None:
        found = mine[interval] = Ticker(interval)
    return found
