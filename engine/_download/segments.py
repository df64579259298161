"""Which bytes each request asks for: free ranges first, stealing, and readers' offsets.

Theory of operation
-------------------
``inflight`` holds the requests on the wire, each asking ``[start, end)`` and written
up to ``pos``.  ``next`` hands a connection the first missing bytes of the bitmap that
no request covers, a request's share of what nobody has asked for yet (``_end_of``);
when none are left, a free connection may race a slow request
(``engine._download.tail``).  Offsets readers wait for (``prioritize``) go first.  All of it
runs on the engine loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

from engine._disk.core import RangeFile
from engine._net.transport import ResponseHead
from engine.config import TransferConfig
from engine.errors import InvalidStateError, TransferError


def _nowhere(offset: int, view: memoryview, /) -> int:
    raise InvalidStateError("a response was to be written before its head was checked")


class Stop(enum.Enum):
    """Why a write callback stopped its own request."""

    RANGE_END = "range end reached"
    BODY_END = "the body ended before the range asked for"
    BAD_RANGE = "Content-Range is not the range asked for"
    NO_RANGES = "server ignores ranges"
    CHANGED = "content changed on the server"
    HTTP = "error status"
    STORAGE = "storage failed"
    UNSUPPORTED = "random access needs ranges and a length"
    OVERTAKEN = "another request brought its bytes first"


@dataclasses.dataclass(eq=False)
class Stream:
    """One request in flight: asked ``[start, end)``, written up to ``pos``."""

    start: int
    end: int | None
    pos: int
    head: ResponseHead = dataclasses.field(default_factory=ResponseHead)
    checked: bool = False
    retire: bool = False
    """Its worker ends with it: a reader's connection took its place."""
    stop: Stop | None = None
    error: TransferError | None = None
    held: bytearray | None = None
    """A plain body whose rest fits in memory: its pieces are appended here, with none
    of the checks a piece of a ranged file needs (``Sink.hold``)."""
    ends_body: bool = False
    """A body of unknown length ends at ``end`` if this response gets there."""
    started: float = 0.0
    """Loop time its request went on the wire."""
    rival: Stream | None = None
    """The request racing it for the same bytes (see ``engine._download.tail``)."""
    twin: bool = False
    """It races a slow request (the rival) for that request's bytes."""
    wasted: int = 0
    """A twin's bytes that its rival had written already (see ``engine._download.tail``)."""
    raced: bool = False
    """A twin raced it and gave up: it is not raced again."""
    transfer: asyncio.Future[Any] | None = None
    """libcurl's transfer of it, to end it early."""
    source: Any = None
    """The ``engine._download.sources.Source`` it asks."""
    why: str = ""
    """Why its source disagrees with the file (``Stop.CHANGED``), when it does."""
    put = staticmethod(_nowhere)
    """Where its bytes go: the file's sink's ``write``, set once its head passed (a
    class attribute until then, not a field: a small file makes one stream)."""

    def received(self) -> int:
        """Body bytes its write callback took (what a rate limit counts)."""
        return self.pos - self.start


class Segments:
    """The requests in flight for one file and the plan for the next ones."""

    def __init__(self, config: TransferConfig) -> None:
        self.config = config
        self.inflight: list[Stream] = []
        self.urgent: list[int] = []
        """Offsets readers wait for, to be fetched before anything else."""
        self.readers: list[int] = []
        """Offsets that reads wait for right now."""

    def next(self, rf: RangeFile, connections: int, paced: bool = False) -> tuple[int, int] | None:
        """The next range to ask for: readers' offsets, else free missing bytes; None
        when every missing byte is asked for already (see ``engine._download.tail``).
        ``paced``: under a rate limit, whose shares grow as connections finish,
        requests are long (``chunk_size``): each new request starts libcurl's pacing
        afresh, and a short one ends ahead of its pace."""
        while self.urgent:
            start = self.urgent.pop(0)
            gap = rf.next_missing(start)
            free = gap and self._subtract_inflight(gap[0], gap[0] + gap[1])
            if free and free[0] - start < self.config.readahead_slack:
                return free[0], min(free[1], free[0] + self.config.chunk_size)
        pos = 0
        while (gap := rf.next_missing(pos)) is not None:
            start, length = gap
            free = self._subtract_inflight(start, start + length)
            if free is not None:
                end = free[0] + self.config.chunk_size if paced else 0
                end = end or self._end_of(free[0], rf, connections)
                return free[0], min(free[1], end)
            pos = start + length
        return None

    def _end_of(self, start: int, rf: RangeFile, connections: int) -> int:
        """Where a request from ``start`` ends: a share of the bytes nobody has asked
        for yet, ``min_split`` at least and ``chunk_size`` at most, on a block border.

        Requests shrink as the file fills (guided self-scheduling), so the
        connections run out of work within a small request of each other, and none
        needs to take half of another's range: a range split in flight costs what
        the server had sent past the split by the time the request is ended (its
        socket buffers), up to megabytes a split."""
        asked = sum(st.end - st.pos for st in self.inflight if st.end is not None)
        unasked = rf.size - rf.bytes_complete - asked
        share = min(self.config.chunk_size, unasked // (2 * connections))
        share = max(self.config.min_split, share)
        block = rf.block_size
        return (start + share + block - 1) // block * block

    def prioritize(self, offset: int, rf: RangeFile | None, size: int | None) -> bool:
        """Fetch ``offset`` next: a reader waits for it (random access).

        A connection already heading there within ``readahead_slack`` is left alone.
        Otherwise the stream whose range holds the offset is cut there, and the offset
        goes to the front of the queue: a new connection takes it when the cap allows,
        else the stream with most left that no waiting reader needs is stopped and its
        connection takes it.  That connection then reads on from the offset (read-ahead
        for the reader) until its chunk ends; the holes are filled afterwards as usual.
        Call ``reader_done`` when the read no longer waits.  ``size`` is None when ranges
        do not work.  Returns True when a new connection should start for the offset.
        """
        self.readers.append(offset)
        if rf is None or size is None or offset >= size:
            return False
        start = offset - offset % rf.block_size
        for st in self.inflight:
            end = st.end if st.end is not None else size
            if st.pos <= start < end:
                if start - st.pos <= self.config.readahead_slack:
                    return False  # arrives soon anyway
                st.end = start  # its write callback stops there
                break
        if start in self.urgent:
            return False
        self.urgent.append(start)
        if len(self.inflight) >= self.config.connections:
            # Stop the stream with most left that no reader needs, and retire its
            # worker; the new worker starts now rather than after the victim's next
            # piece, which a rate-limited server may send 100 ms later.
            victims = [st for st in self.inflight if st.end is not None and not self._needed(st)]
            if not victims:
                return False  # every connection serves a reader: this one queues
            victim = max(victims, key=lambda st: (st.end or 0) - st.pos)
            victim.end = victim.pos
            victim.retire = True
        return True

    def reader_done(self, offset: int) -> None:
        if offset in self.readers:
            self.readers.remove(offset)

    def _needed(self, st: Stream) -> bool:
        """Whether a waiting reader's offset lies ahead of this stream, within its range."""
        end = st.end if st.end is not None else 1 << 62
        return any(st.pos <= o < end for o in self.readers)

    def _subtract_inflight(self, start: int, end: int) -> tuple[int, int] | None:
        cuts = sorted((s.start, s.end or end) for s in self.inflight)
        for a, b in cuts:
            if b <= start or a >= end:
                continue
            if a > start:
                return start, a
            start = max(start, b)
            if start >= end:
                return None
        return (start, end) if start < end else None
