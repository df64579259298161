"""How many connections a file uses when the caller leaves it to the engine.

Theory of operation
-------------------
A download starts with a few connections (``START``).  Every ``WINDOW`` seconds its
throughput is measured; while it grows, the connections are doubled, and each doubling
is judged over the next full window: when the doubling did not raise the throughput
by ``GAIN`` at least, the added connections did not pay (the link, the disk or the
server is the limit) and the download goes back to the count before and stops
growing.  So a server that limits each connection gets as many as raise the
throughput, up to the cap (64 a file, within the per-host cap), and a fast server
or a slow link keeps a few.  A 429 or 503 answer, or a refused connection, halves
the count and stops the growth: the server is asking for fewer.
"""

from __future__ import annotations

START = 4
"""Connections a download begins with."""
WINDOW = 0.25
"""Seconds over which the throughput is measured."""
GAIN = 1.3
"""The factor by which a doubling must raise the throughput to be kept."""


class Width:
    """The connection count of one download (see the module's theory)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.target = min(START, self.cap)
        self.growing = True
        self._mark: tuple[float, int] | None = None
        self._judging: tuple[float, int] | None = None
        """(throughput, count) before the last doubling, while it is judged."""

    def tick(self, now: float, done: int) -> int:
        """The count to run now, given the bytes ``done`` at time ``now``."""
        mark = self._mark
        if mark is None or done < mark[1]:
            self._mark = (now, done)
            return self.target
        if now - mark[0] < WINDOW:
            return self.target
        rate = (done - mark[1]) / (now - mark[0])
        self._mark = (now, done)
        judging, self._judging = self._judging, None
        if judging is not None and rate < judging[0] * GAIN:
            self.growing = False  # the last doubling did not pay: back to before it
            self.target = judging[1]
        elif self.growing and self.target < self.cap and rate > 0:
            self._judging = (rate, self.target)
            self.target = min(self.cap, self.target * 2)
        return self.target

    def busy(self) -> None:
        """The server answered 429 or 503, or refused a connection: fewer."""
        self.target = max(1, self.target // 2)
        self.growing = False
        self._judging = None
