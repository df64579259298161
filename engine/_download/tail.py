"""The slow tail: a connection with nothing left races the slowest range still in flight.

Theory of operation
-------------------
Requests shrink as the file fills (``Segments.next``), so near the end every
connection holds a small range and they finish together, with no range split and no
byte asked for twice.  One connection that is much slower than the others (a bad
path, a throttled server node) would still hold the whole download back for its last
range.  So when a connection finds nothing free and such a range is in flight, it
asks for that range again from where the slow request has got to: a *twin*.  Both
write into the same file; a byte is written by whichever request brings it first,
and what the other then brings for it is counted in ``duplicated`` and dropped.
When the twin gets ahead of the slow request, the slow one is ended at once; when
the slow one finishes first, the twin is ended.  A range has at most one twin, and
only a range whose request is at most a quarter as fast as the usual request, and
would take half a second or more still, gets one.  A request still waiting for a
connection slot (the per-host cap, while many files share a host) is not slow but
queued, and gets none: its twin would only wait beside it, then fetch the same
bytes.  A twin that is no faster (a server that paces every request alike) would
bring every byte twice: once it has brought ``WASTE`` bytes its rival had already,
it is ended and that range is not raced again.
So a race costs at most ``WASTE`` bytes, and each range is raced once at most.
"""

from __future__ import annotations

import dataclasses

from engine._download.segments import Stop, Stream

_WORTH = 0.5
"""Seconds a slow request must still need, at its own rate, before it gets a twin."""
_SETTLED = 0.25
"""Seconds a request runs before its rate is taken as its own."""
_SLOWER = 4.0
"""How many times slower than the usual request a request must be to get a twin."""
WASTE = 256 << 10
"""Bytes a twin may bring that its rival had already, before it gives up."""


@dataclasses.dataclass
class Tail:
    """The twins of one download and what they cost."""

    duplicated: int = 0
    """Bytes received twice (by a twin and the request it raced), dropped on arrival."""
    usual: float = 0.0
    """A typical request's bytes a second: a running mean of the ones that ended."""

    def ended(self, stream: Stream, now: float) -> None:
        """A request ended: learn its rate; a finished one ends its twin."""
        took = now - stream.started
        got = stream.pos - stream.start
        if got > 0 and stream.rival is None:
            rate = got / max(took, 0.001)
            self.usual = rate if not self.usual else 0.7 * self.usual + 0.3 * rate
        rival = stream.rival
        if rival is None:
            return
        stream.rival = rival.rival = None
        finished = stream.end is not None and stream.pos >= stream.end
        if finished and stream.stop is not Stop.OVERTAKEN:
            overtake(rival)  # this one brought the range to its end first

    def pick(self, inflight: list[Stream], now: float) -> tuple[int, int] | None:
        """The range a free connection should race, if one is worth it (the twin's
        ``[start, end)``); the caller registers the twin with ``pair``."""
        usual = self.usual or max((_rate(s, now) for s in inflight), default=0.0)
        if usual <= 0:
            return None
        best: Stream | None = None
        best_left = 0.0
        for st in inflight:
            if not st.started:  # waiting for a slot (the per-host cap): not slow, queued
                continue
            if st.rival is not None or st.raced or st.end is None or now - st.started < _SETTLED:
                continue
            rate = _rate(st, now)
            left = st.end - st.pos
            if rate * _SLOWER > usual or left < rate * _WORTH or left <= 0:
                continue
            if left / max(rate, 1.0) > best_left:
                best, best_left = st, left / max(rate, 1.0)
        if best is None or best.end is None:
            return None
        return best.pos, best.end

    @staticmethod
    def pair(twin: Stream, inflight: list[Stream]) -> None:
        """Make ``twin`` the rival of the request whose range it races."""
        for st in inflight:
            twinned = st.rival is not None or st is twin
            if not twinned and st.end == twin.end and st.start <= twin.start <= st.pos:
                st.rival, twin.rival = twin, st
                twin.twin = True
                return


def _rate(st: Stream, now: float) -> float:
    took = now - st.started
    return (st.pos - st.start) / took if took > 0 else 0.0


def overtake(loser: Stream) -> None:
    """End ``loser``'s request now: its rival has its bytes (or is ahead of it)."""
    loser.end = loser.pos
    loser.stop = Stop.OVERTAKEN
    transfer = loser.transfer
    if transfer is not None and not transfer.done():
        transfer.cancel()  # the multi removes the handle: no wait for its next byte


def ahead(st: Stream) -> int:
    """Bytes at ``st.pos`` its rival has written already (0 when none)."""
    rival = st.rival
    return rival.pos - st.pos if rival is not None and rival.pos > st.pos else 0
