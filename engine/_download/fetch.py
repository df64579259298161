"""The requests of one file, each from its source and slot to its settled end.

Theory of operation
-------------------
``Fetcher._fetch`` runs one request of ``[start, end)``: it picks the source where it
should end soonest (``engine._download.sources``), waits for a slot of its host in
the plan (``engine._net.connections``), puts the request on the wire
(``engine._download.request``) with its write callback (``engine._download.writer``),
and judges how it ended.  Its head is checked at the first byte
(``engine._download.checks``): the first that decides the file chooses the file's
sink (``engine._download.file``), every other must agree with it.  A request that
did not end well goes to ``engine._download.retries``.  What requests to make, and
when, is the schedule's (``engine._download.segmented``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from engine._download.adaptive import Width
from engine._download.checks import check_response, missing_support, unsupported
from engine._download.file import DownloadFile, Put
from engine._download.request import (
    EFFECTIVE_URL,
    TIMED_OUT,
    multi_for_loop,
    set_up,
    stat,
    transfer,
)
from engine._download.retries import Retries, no_source
from engine._download.segments import Segments, Stop, Stream
from engine._download.sinks import Seed
from engine._download.sources import Source, Sources
from engine._download.tail import Tail
from engine._download.writer import writer
from engine._net.connections import PER_HOST
from engine._net.ratelimit import Budget
from engine._net.transport import FtpReplies, RequestOptions, ResponseHead, is_ftp, is_sftp
from engine._ops.validate import host_of
from engine._runtime.loop import running_loop
from engine.config import TransferConfig
from engine.errors import TransferError
from engine.values import BackgroundTransferPriority

_DEFAULT_RANK = BackgroundTransferPriority.DEFAULT.rank


class Snapshot(NamedTuple):
    """Progress as the API reports it: body bytes, 0 total while unknown.  (A named
    tuple: a frozen dataclass set each field through object.__setattr__, at every
    tick and twice for every small file.)"""

    bytes_received: int
    total_bytes_to_receive: int
    has_restarted: bool
    has_response_changed: bool
    connections: int
    duplicated: int = 0
    """Bytes received twice while racing a slow request (``engine._download.tail``)."""


def _default_rank() -> int:
    """A download no operation drives waits for its slots as a DEFAULT one."""
    return _DEFAULT_RANK


async def _plain_finish(finish: Callable[[], Awaitable[None]]) -> None:
    await finish()


class Fetcher:
    """The requests of one file (the base of ``SegmentedDownload``)."""

    # State that starts the same for every download is declared here, at class level,
    # and set on the instance only when it changes: a mirror makes one of these a file.
    last_head: ResponseHead | None = None
    """The newest response head that was accepted, for get_response_information."""
    restarts = 0
    """Times the download started over (content changed, or no ranges)."""
    has_restarted = False
    has_response_changed = False
    on_blocks: Callable[[], None] | None = None
    """Called when writes complete blocks (a reader may be waiting for them)."""
    on_resumable: Callable[[], None] | None = None
    """Called just before a control file is made or found: from then on, a crash
    leaves a download to resume."""
    budget: Budget | None = None
    """The rate limit its requests share (``engine._net.ratelimit``), if any."""
    loose = False
    """The caller knows the expected checksum: other sources need only agree on the size."""
    seed: Seed | None = None
    """The file's first range, received already: kept as it starts (``sinks.hand_over``)."""
    new = False
    """Set when nothing of this download can be on disk yet (an operation's first run
    in the process that created it): ``run`` does not look for a control file, a
    lookup that in a folder being filled waits behind every file made there.  A file
    left under the same name by an operation no state database knows is replaced."""
    _put: Put
    """The sink's ``write``, set on each request whose head passed (``Stream.put``)."""
    _on_wire = 0  # requests holding a slot (the rest of inflight wait for one)
    _stat_result: tuple[str, int | None] = ("", None)
    """SFTP: (time, size) of the file, from the stat at the start of a round."""
    _retries: Retries | None = None
    """Its failures in a row, made at the first (most downloads have none)."""

    def __init__(
        self,
        url: str,
        result: os.PathLike[str] | str,
        *,
        config: TransferConfig | None = None,
        headers: Sequence[str] = (),
        on_progress: Callable[[Snapshot], None] | None = None,
        request: RequestOptions | None = None,
        require_ranges: bool = False,
        mirrors: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.sources = Sources([url, *mirrors])
        """The URLs of the file (``engine._download.sources``), the first being ``url``."""
        self._host = host_of(url)
        self._ftp, self._sftp = is_ftp(url), is_sftp(url)
        self.rank: Callable[[], int] = _default_rank
        """The priority rank of the download's requests when they wait for a slot
        (smaller first); read at each request, so a change of priority counts from
        the next one."""
        self.request = request or RequestOptions()
        self.actual_url = url
        """The URL after redirects of the response in ``last_head``."""
        self.finisher: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] = _plain_finish
        """Wraps the rename onto the final name: an operation verifies a checksum first
        and makes the rename atomic with its status."""
        self.require_ranges = require_ranges
        """Random access: a server without ranges or a length fails at once."""
        self.reserve = 0
        """Free bytes a new file's preallocation must leave on its file system."""
        self.config = config or TransferConfig()
        self.file = DownloadFile(os.fspath(result), self.config)
        """The file as its responses decided it, and its sink (``engine._download.file``)."""
        self.headers = list(headers)
        self.on_progress = on_progress
        self.segments = Segments(self.config)
        self._width: Width | None = None
        """The connection count when the engine chooses it (``engine._download.adaptive``)."""
        if self.config.adaptive:
            self._width = Width(min(self.config.connections, PER_HOST))
        self.tail = Tail()
        self._wake: asyncio.Future[None] | None = None
        """Set when a request ends: a connection waiting to race a slow one looks again."""
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def result(self) -> Path:
        return self.file.path

    def _add_workers(self) -> None:
        """More connections once the first response decided a file fetched in ranges
        (the schedule's: ``SegmentedDownload``)."""

    async def _stat(self) -> None:
        """SFTP sends no head: ask for the size and time first (a request without body)."""
        while isinstance(
            found := await stat(self.url, self.config, self.request, self._host, self.rank),
            TransferError,
        ):
            await self._failed().back_off(found, None)
        self._stat_result = found

    # -- one request ------------------------------------------------------------
    async def _fetch(self, start: int, end: int | None) -> Stream:
        """One request for ``[start, end)``; returns its stream once settled.

        It waits for a slot (``engine._net.connections``) in the plan, so no other
        connection asks for its bytes meanwhile (one may still take half of them:
        the range is put in the request once the slot is there)."""
        multi, pool, slots = multi_for_loop()
        loop = running_loop()
        source = self.sources.pick(self.segments.inflight, loop.time())
        if source is None:
            raise no_source(self.sources)
        stream = Stream(start, end, start)
        stream.source = source
        host = source.host
        inflight = self.segments.inflight
        inflight.append(stream)
        Tail.pair(stream, inflight)
        try:
            await slots.take(host, self.rank())
        except BaseException:
            inflight.remove(stream)
            raise
        if stream.stop is Stop.OVERTAKEN:  # its rival finished while it waited
            slots.give(host)
            inflight.remove(stream)
            self.tail.ended(stream, loop.time())
            return stream
        try:  # from here the slot is given back whatever happens, a refused set-up too
            curl = pool.take()
            headers = self._request_headers(start, stream.end, source)
            ftp = self._ftp
            replies = None
            if ftp or self._sftp:  # SFTP has no head: what the stat said stands in
                replies = FtpReplies() if ftp else FtpReplies(*self._stat_result)
            alone = self.file.rf is not None and replies is None
            on_write = writer(stream, self._check_head, self.tail, self.on_blocks)
            set_up(
                curl,
                source.url,
                self.config,
                headers,
                self.request,
                stream,
                on_write,
                replies,
                alone,
            )
            self._on_wire += 1
            budget = self.budget
            if budget is not None:
                budget.attach(curl, multi, stream.received)
            stream.started = loop.time()
            source.busy += 1
            try:
                code, message = await transfer(multi, curl, stream)
            finally:
                source.busy -= 1
                self._on_wire -= 1
                if budget is not None:
                    budget.detach(curl)
        finally:
            slots.give(host)
            inflight.remove(stream)
            now = loop.time()
            self.tail.ended(stream, now)
            self.sources.measured(source, stream.pos - stream.start, now - stream.started)
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        if stream.checked and stream.stop in (None, Stop.RANGE_END, Stop.HTTP):
            self.actual_url = str(curl.getinfo(EFFECTIVE_URL) or self.url)
        pool.give(curl)
        if not stream.checked and code == 0 and stream.stop is None:
            self._check_head(stream)  # an empty body: the head is all there is
        if not self._ended_well(stream, code):
            await self._failed().settle(stream, code, message)
        return stream

    def _request_headers(self, start: int, end: int | None, source: Source) -> list[str]:
        """The request's headers, its Range, and If-Range: a changed file comes whole."""
        if self.request.single_request or self._ftp or self._sftp:
            return list(self.headers)
        headers = [*self.headers, f"Range: bytes={start}-{'' if end is None else end - 1}"]
        validator = Sources.validator(source)
        if validator and (self.file.size is not None or start > 0):  # unknown length too
            headers.append(f"If-Range: {validator}")
        return headers

    def _writer(self, st: Stream) -> Callable[[memoryview], int | None]:
        """The write callback of ``st`` (``engine._download.writer``)."""
        return writer(st, self._check_head, self.tail, self.on_blocks)

    def _check_head(self, st: Stream) -> bool:
        """Validate a response before its first byte is written (``engine._download.
        checks``); False stops the request."""
        st.checked = True
        head = st.head
        head.parse()
        if head.ftp is not None:
            head.as_http(st.start, st.end)
        file = self.file
        source = st.source
        several = file.size is not None and self.sources.several and source is not None
        against = self.sources.expected(source, file, self.loose) if several else file
        verdict = check_response(head, st.start, st.end, file, against)
        stop = verdict.stop
        if several and (stop is None or stop is Stop.NO_RANGES):
            self.sources.agree(source, head)  # its first response that agrees
        if stop is not None:
            st.stop, st.why = stop, verdict.why
            if stop is Stop.HTTP:
                self.last_head = head  # Windows shows the error response (a 404) too
            return False
        self.last_head = head
        if verdict.decides:
            self._put = file.adopt(
                head, verdict.size, verdict.ranges, self.reserve, self._resumable
            )
            self.sources.decided(source, file.etag, file.last_modified)
            if file.rf is not None:
                self._add_workers()
        elif verdict.again:  # no ranges: the retry of a broken body starts over from zero
            self.has_restarted = True
            self.restarts += 1
        st.put = self._put
        st.end = verdict.end
        st.ends_body = verdict.ends_body
        if self.require_ranges:
            missing = missing_support(file.size, file.ranges_ok)
            if missing is not None:
                st.stop, st.error = Stop.UNSUPPORTED, unsupported(self.url, missing)
                return False
        if file.plain and file.sink is not None:
            st.held = file.sink.hold(st.pos, st.end)  # the rest may fit in memory
        return True

    # -- retries ---------------------------------------------------------------
    def _failed(self) -> Retries:
        """The download's failures in a row (``engine._download.retries``)."""
        retries = self._retries
        if retries is None:
            retries = Retries(self.url, self.config, self.sources, self._width)
            self._retries = retries
        return retries

    def _ended_well(self, stream: Stream, code: int) -> bool:
        """Count the request's progress; True when it ended without a fault (most do:
        no coroutine settles them), else ``Retries.settle`` decides what the fault means."""
        if stream.stop is Stop.OVERTAKEN:
            return True
        # Progress resets the failures, unless without ranges (a retry throws the bytes
        # away) or the request ended below the low-speed limit: a trickle that always
        # makes a little progress would otherwise retry for ever.
        retries = self._retries
        progressed = stream.pos > stream.start and code != TIMED_OUT
        if retries is not None and progressed and self.file.ranges_ok:
            retries.failures = 0
        if stream.stop is Stop.RANGE_END or (code == 0 and stream.stop is None):
            if stream.end is None or (stream.ends_body and stream.pos >= stream.end):
                self.file.body_ended = True  # unknown length: the body ends when the server says
                return True
            return stream.pos > stream.start or stream.pos >= stream.end
        if stream.stop is Stop.BODY_END:
            self.file.body_ended = True
            return True
        return False

    def _resumable(self) -> None:
        if self.on_resumable is not None:
            self.on_resumable()
