"""How many connections a file uses when the caller leaves it to the engine.

Theory of operation
-------------------
A download starts with two connections (``START``): on a fast server one or two
are often the fastest, and more only add requests and contention.  Its throughput is measured over
windows of ``WINDOW`` seconds; while it grows, the connections are doubled, and each
doubling is judged by the windows after it: as soon as one shows the throughput
raised by ``GAIN``, it is kept; when ``TRIES`` windows in a row did not, the added
connections did not pay (the link, the disk or the server is the limit) and the
download goes back to the count before and stops growing.  The two mistakes cost
unlike amounts: a doubling kept for nothing on a fast server costs a few idle
connections, one undone for nothing on a server that paces each connection leaves
the download at a fraction of its speed to the end; one window that happens to be
slow (the machine busy, a pause in the server) must not undo it.  So a server that
limits each connection gets as many as raise the throughput, up to the cap (64 a
file, within the per-host cap), and a fast server or a slow link keeps a few.  A
429 or 503 answer, or a refused connection, halves the count and stops the growth:
the server is asking for fewer.

No window is measured while the count has just changed: after the start and after
each doubling, ``SETTLE`` seconds pass before a window opens.  The first bytes of a
download come over the first request alone, and new connections open and send their
first requests: a window holding that ramp measures the start-up, not the count, and
the next one would then look faster whatever the count (on a fast server, four
connections judged against their own start-up doubled to eight for nothing).
"""

from __future__ import annotations

START = 2
"""Connections a download begins with."""
SETTLE = 0.15
"""Seconds after the start or a doubling before a window opens."""
WINDOW = 0.3
"""Seconds over which the throughput is measured."""
GAIN = 1.3
"""The factor by which a doubling must raise the throughput to be kept."""
TRIES = 2
"""Windows a doubling has to show its gain before it is undone."""


class Width:
    """The connection count of one download (see the module's theory)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.target = min(START, self.cap)
        self.growing = True
        self._mark: tuple[float, int] | None = None
        """(time, bytes done) where the running window or settling began."""
        self._settled = False
        """Whether ``_mark`` opens a window (else the count is settling since it)."""
        self._judging: tuple[float, int] | None = None
        """(throughput, count) before the last doubling, while it is judged."""
        self._misses = 0
        """Windows since the last doubling that did not show its gain."""

    def tick(self, now: float, done: int) -> int:
        """The count to run now, given the bytes ``done`` at time ``now``."""
        mark = self._mark
        if mark is None or done < mark[1]:  # the start, or the download started over
            self._mark, self._settled = (now, done), False
            return self.target
        if not self._settled:
            if now - mark[0] >= SETTLE:
                self._mark, self._settled = (now, done), True
            return self.target
        if now - mark[0] < WINDOW:
            return self.target
        rate = (done - mark[1]) / (now - mark[0])
        self._mark = (now, done)
        judging = self._judging
        if judging is not None and rate < judging[0] * GAIN:
            self._misses += 1
            if self._misses >= TRIES:  # the last doubling did not pay: back to before it
                self.growing, self.target, self._judging = False, judging[1], None
            return self.target
        if self.growing and self.target < self.cap and rate > 0:
            self._judging, self._misses = (rate, self.target), 0
            self.target = min(self.cap, self.target * 2)
            self._settled = False  # the new connections open before the next window
        else:
            self._judging = None
        return self.target

    def busy(self) -> None:
        """The server answered 429 or 503, or refused a connection: fewer."""
        self.target = max(1, self.target // 2)
        self.growing = False
        self._judging = None
        self._misses = 0
