"""The write callback: what libcurl hands one request goes to the file's sink.

Theory of operation
-------------------
``writer`` makes the callback pycurl calls with a view of libcurl's buffer for each
piece of one request's body.  The first piece has the head checked first (``check``,
see ``engine._download.checks``), which sets the sink's ``write`` on the stream (its
``put``) or stops the request; from then on a piece goes to ``put`` at once, cut at
the end of the range asked for, in the one Python call libcurl makes.  A plain body
whose rest fits in memory (``Stream.held``) is appended there with no check at all.
A request racing another for the same bytes (``engine._download.tail``) drops what
its rival wrote already.  Returning 0 stops the request (libcurl then reports a write
error, which the stream's ``stop`` explains); None takes the piece.
"""

from __future__ import annotations

from collections.abc import Callable

from engine._download.segments import Stop, Stream
from engine._download.tail import WASTE, Tail, ahead, overtake
from engine.errors import StorageError

Blocks = Callable[[], None] | None
"""Called when writes complete blocks (a reader may wait for them)."""


def writer(
    st: Stream, check: Callable[[Stream], bool], tail: Tail, blocks: Blocks
) -> Callable[[memoryview], int | None]:
    """The write callback of the request ``st``."""

    def on_write(mv: memoryview) -> int | None:
        n = len(mv)
        held, end = st.held, st.end
        if held is not None and end is not None and st.pos + n <= end:
            held += mv  # the held body: it ends where the head said (check)
            st.pos += n
            return None
        try:
            if st.stop is Stop.OVERTAKEN:
                # Its rival has these bytes, and its transfer is cancelled; libcurl
                # may still hand it pieces until the multi drops it.  They keep
                # that mark (a range end written over it would make the cancel a
                # cancel of the whole download, see request.transfer).
                return 0
            if not st.checked and not check(st):
                return 0
            if st.rival is not None:
                return _race(st, mv, tail, blocks)
            pos, end = st.pos, st.end
            if end is not None and pos + n > end:
                if end > pos and st.put(pos, mv[: end - pos]) and blocks is not None:
                    blocks()
                st.pos = end
                st.stop = Stop.RANGE_END
                return 0
            if st.put(pos, mv) and blocks is not None:
                blocks()
        except StorageError as exc:
            st.stop, st.error = Stop.STORAGE, exc
            return 0
        st.pos = pos + n
        return None

    return on_write


def _race(st: Stream, mv: memoryview, tail: Tail, blocks: Blocks) -> int | None:
    """A piece of a request that races another for its bytes: the bytes the rival
    wrote already are counted and dropped; a twin that gets ahead of the request it
    races ends that request."""
    rival = st.rival
    assert rival is not None
    pos, end = st.pos, st.end
    n = len(mv) if end is None else max(0, min(len(mv), end - pos))
    had = min(n, ahead(st))
    tail.duplicated += had
    if st.twin:
        st.wasted += had
        if st.wasted > WASTE and rival.stop is None:  # not catching up: give up
            rival.raced = True
            overtake(st)
            return 0
    if n > had and st.put(pos + had, mv[had:n]) and blocks is not None:
        blocks()
    st.pos = pos + n
    if st.twin and st.pos > rival.pos and rival.stop is None:
        overtake(rival)
    if n < len(mv):
        st.stop = Stop.RANGE_END
        return 0
    return None
