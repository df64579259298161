"""Several sources of one file: which one each request goes to, and which are dropped.

Theory of operation
-------------------
A download may name more URLs than its own, all of the same content.  The first
response decides the size and the validators (from whichever source answered it).
Every other source must agree before a byte of it is written: the same size, and,
unless the caller gave the expected checksum (which the finished file must match
anyway), the same ETag or Last-Modified as far as both sent one.  A source learns
its own validators from its first response that agrees, and later responses must
keep them: content that changes on one source drops that source, with its bytes
kept only from before the change (they agreed), never mixed with the new ones.

A source is dropped, with the reason kept for the progress, when it disagrees, when
it answers with an error that no retry cures (404, a refused TLS certificate), and
when it fails ``retries`` times in a row.  The download fails only when every source
is dropped.  Each request goes to the source where it is expected to end soonest:
a source's requests in flight plus one, over its measured bytes a second (a source
not measured yet counts as fast as the best, so it is tried).  Connections thus
spread in proportion to each source's throughput.  A download of one source pays
one attribute read a request.
"""

from __future__ import annotations

import dataclasses

from engine._download.checks import UNDECIDED, Validators
from engine._download.segments import Stream
from engine._net.transport import ResponseHead
from engine._ops.validate import host_of


@dataclasses.dataclass(eq=False)
class Source:
    """One URL of the file and what is known of it."""

    url: str
    host: str
    etag: str = ""
    last_modified: str = ""
    agreed: bool = False
    """Its first response agreed with the download's size and validators."""
    dropped: str = ""
    """Why it is no longer used ("" while it is)."""
    failures: int = 0
    """Failures in a row (progress resets the count)."""
    busy: int = 0
    """Its requests in flight."""
    rate: float = 0.0
    """Bytes a second of one of its requests (a running mean); 0 until measured."""
    received: int = 0
    """Bytes of the file it brought."""


class Sources:
    """The sources of one download, the first being the operation's own URI."""

    def __init__(self, urls: list[str]) -> None:
        self.all = [Source(url, host_of(url)) for url in urls]
        self.several = len(self.all) > 1
        """More than one: each response is checked against its source's validators."""

    def live(self) -> list[Source]:
        return [s for s in self.all if not s.dropped]

    def pick(self, inflight: list[Stream], now: float) -> Source | None:
        """The source where a new request is expected to end soonest; None when all
        are dropped.  A source with no request ended yet is judged by the ones it
        has running (its first may be long)."""
        if not self.several:  # (most downloads: no list made a request)
            only = self.all[0]
            return None if only.dropped else only
        live = self.live()
        if len(live) < 2:
            return live[0] if live else None
        rates = {id(s): s.rate or _running_rate(s, inflight, now) for s in live}
        best = max(rates.values()) or 1.0
        return min(live, key=lambda s: (s.busy + 1 + s.failures) / (rates[id(s)] or best))

    def measured(self, source: Source, got: int, took: float) -> None:
        """A request of ``source`` ended having brought ``got`` bytes in ``took`` s."""
        source.received += got
        if got > 0:
            source.failures = 0
            rate = got / max(took, 0.001)
            source.rate = rate if not source.rate else 0.7 * source.rate + 0.3 * rate

    def drop(self, source: Source, why: str) -> bool:
        """Stop using ``source``; True while another source is left."""
        if not source.dropped:
            source.dropped = why
        return bool(self.live())

    def reasons(self) -> dict[str, str]:
        """The dropped sources' URLs and why each was dropped."""
        return {s.url: s.dropped for s in self.all if s.dropped}

    @staticmethod
    def expected(source: Source, file: Validators, loose: bool) -> Validators:
        """The validators a response of ``source`` must not contradict: its own once
        it agreed, else the file's (none when the expected checksum decides: ``loose``)."""
        if source.agreed:
            return source
        return UNDECIDED if loose else file

    @staticmethod
    def agree(source: Source, head: ResponseHead) -> None:
        """A response of ``source`` agreed with the file: its first makes the source's
        own validators known."""
        if not source.agreed:
            source.agreed = True
            source.etag = head.get("ETag") or ""
            source.last_modified = head.get("Last-Modified") or ""

    @staticmethod
    def validator(source: Source) -> str:
        """What an If-Range to ``source`` carries: its strong ETag, else its time."""
        strong = source.etag if source.etag and not source.etag.startswith("W/") else ""
        return strong or source.last_modified

    def decided(self, source: Source | None, etag: str, modified: str) -> None:
        """The file's validators were set from ``source``'s response (None: from a
        control file an earlier run left, whose source is unknown: the first)."""
        source = source or self.all[0]
        source.agreed, source.etag, source.last_modified = True, etag, modified

    def forget(self) -> None:
        """The download starts over: every source is asked again."""
        for source in self.all:
            source.agreed, source.etag, source.last_modified = False, "", ""
            source.dropped, source.failures = "", 0


def _running_rate(source: Source, inflight: list[Stream], now: float) -> float:
    """Bytes a second of ``source``'s requests on the wire for a while (0: none)."""
    rates = [
        (st.pos - st.start) / (now - st.started)
        for st in inflight
        if st.source is source and st.started and now - st.started > 0.2
    ]
    return sum(rates) / len(rates) if rates else 0.0
