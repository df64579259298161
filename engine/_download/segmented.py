"""One file over many ranged connections: the schedule of its requests, and retries.

Theory of operation
-------------------
The first request asks for ``bytes=0-(first_request-1)`` (a small file costs that one
request).  Its response decides the file (``engine._download.checks``, adopted by
``engine._download.file``): the size, the validators, whether ranges work, and so the
sink its bytes go to (``engine._download.sinks``); the other connections start then.
Each request asks for a bounded range (``engine._download.segments``), so it ends
cleanly and its connection stays alive; ranges shrink as the file fills, so no range
is split in flight, and a connection out of work may race a slow request for its last
bytes (``engine._download.tail``).  A request goes on the wire through
``engine._download.request``, and its bytes reach the sink through the write callback
(``engine._download.writer``) once its head passed the checks.  A request that did not
end well is retried with back-off, or restarts the file (a change of content, ranges
ignored: a result never mixes two versions), or fails the download.  Blocks already
complete in the bitmap are never fetched again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from engine._disk.core import CONTROL_SUFFIX
from engine._download.adaptive import Width
from engine._download.checks import check_response, missing_support, refusal, unsupported
from engine._download.file import DownloadFile, Put
from engine._download.request import (
    EFFECTIVE_URL,
    REFUSED,
    TIMED_OUT,
    multi_for_loop,
    set_up,
    stat,
    transfer,
)
from engine._download.segments import Segments, Stop, Stream
from engine._download.sources import Source, Sources
from engine._download.tail import Tail
from engine._download.writer import writer
from engine._net.connections import PER_HOST
from engine._net.ratelimit import Budget
from engine._net.transport import (
    FtpReplies,
    RequestOptions,
    ResponseHead,
    curl_error,
    is_ftp,
    is_sftp,
)
from engine._ops.validate import host_of
from engine._runtime.loop import running_loop
from engine._runtime.ticker import Ticker, ticker
from engine.config import TransferConfig
from engine.errors import TransferError, TransportError
from engine.values import BackgroundTransferPriority
from engine.web_error import WebErrorStatus

_MAX_RESTARTS = 3

_LOOK = 0.1
"""Seconds between looks, while every missing byte is asked for, for a slow request to
race (a request that ends wakes the connections waiting at once)."""

_TICK = 0.2
"""Seconds between progress reports (and looks at whether a write-back is due)."""

_DEFAULT_RANK = BackgroundTransferPriority.DEFAULT.rank


class _Restart(Exception):
    def __init__(self, changed: bool) -> None:
        super().__init__("restart")
        self.changed = changed


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


class SegmentedDownload:
    """Downloads ``url`` into ``result``; resumes what an earlier run left on disk."""

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
    new = False
    """Set when nothing of this download can be on disk yet (an operation's first run
    in the process that created it): ``run`` does not look for a control file, a
    lookup that in a folder being filled waits behind every file made there.  A file
    left under the same name by an operation no state database knows is replaced."""
    _put: Put
    """The sink's ``write``, set on each request whose head passed (``Stream.put``)."""
    _in_round = False
    _on_wire = 0  # requests holding a slot (the rest of inflight wait for one)
    _stat_result: tuple[str, int | None] = ("", None)
    """SFTP: (time, size) of the file, from the stat at the start of a round."""
    _failures = 0
    _failing_since = 0.0  # loop time of the first of the failures in a row
    _workers = 0  # worker coroutines running
    _last_error: TransferError | None = None
    _ticker: Ticker | None = None
    _flushed = 0.0

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

    # -- public ---------------------------------------------------------------
    @property
    def result(self) -> Path:
        return self.file.path

    def snapshot(self) -> Snapshot:
        file = self.file
        return Snapshot(
            (file.size or 0) if file.finished else file.reached,
            file.size or 0,
            self.has_restarted,
            self.has_response_changed,
            self._on_wire,
            self.tail.duplicated,
        )

    async def run(self) -> None:
        """Download until the result file is complete and renamed into place."""
        restarts = 0
        self._tick_soon()
        file = self.file
        try:
            if not self.new and os.path.lexists(file.name + CONTROL_SUFFIX):
                await self._resume()
            while True:
                try:
                    await self._round()
                except _Restart as again:
                    restarts += 1
                    if restarts > _MAX_RESTARTS:
                        raise TransportError(
                            f"{self.url}: content kept changing during the download",
                            web_error_status=WebErrorStatus.UNKNOWN,
                        ) from None
                    self._start_over(changed=again.changed)
                    continue
                if file.complete:
                    self._stop_ticks()  # no flush may race the finish in its thread
                    await self.finisher(file.finish)
                    file.finished = True
                    return
        except BaseException:
            file.keep(not self.request.single_request, self._resumable)
            file.close()
            raise
        finally:
            self._stop_ticks()
            self._report()

    def prioritize(self, offset: int) -> None:
        """Fetch ``offset`` next: a reader waits for it (see ``Segments.prioritize``)."""
        file = self.file
        wanted = self.segments.prioritize(offset, file.rf, file.size if file.ranges_ok else None)
        if wanted and self._in_round:  # the new connection starts now
            self._tasks.add(asyncio.ensure_future(self._worker(None)))

    def reader_done(self, offset: int) -> None:
        self.segments.reader_done(offset)

    # -- rounds and workers ---------------------------------------------------
    async def _round(self) -> None:
        if self._sftp:
            await self._stat()
        tasks = self._tasks = set()  # prioritize() and _adopt() may add workers meanwhile
        self._in_round = True
        try:
            if self.file.size is None:
                # The first request runs here, not in a task of its own: a small file
                # is this one request.  Its head decides the rest (_adopt starts the
                # other connections while it goes on); its worker takes over after it.
                first = await self._fetch(*self._first_request())
                segment = None if first.retire else self._next_segment()
                if segment is not None:
                    tasks.add(asyncio.ensure_future(self._worker(segment)))
            else:
                segment = self._next_segment()
                if segment is None:
                    return
                tasks.add(asyncio.ensure_future(self._worker(segment)))
                self._add_workers()
            while tasks:
                if len(tasks) == 1:  # one connection left: no wait() set-up
                    (task,) = tasks
                    await task
                    tasks.discard(task)
                    continue
                done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    tasks.discard(task)
                    task.result()
        finally:
            self._in_round = False
            self._tasks = set()
            if tasks:  # a failure or a cancel left some running
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _add_workers(self) -> None:
        """Connections beside the one running, as many as the bytes left are worth."""
        if self._in_round and self.file.ranges_ok and self.file.rf is not None:
            more = min(self._connections(), self._useful_connections()) - 1
            self._tasks.update(asyncio.ensure_future(self._worker(None)) for _ in range(more))

    def _connections(self) -> int:
        """Connections the file may use now (fixed, or as ``_width`` has it)."""
        return self.config.connections if self._width is None else self._width.target

    def _widen(self, now: float) -> None:
        """An adaptive download at a tick: more workers when ``_width`` says so (the
        ones past its count leave after their request, see ``_worker``)."""
        rf = self.file.rf
        if self._width is None or not self._in_round or not self.file.ranges_ok or rf is None:
            return
        if self.budget is not None and self.budget.limited():
            return  # the rate limit is the bottleneck: more connections cannot pay
        target = min(self._width.tick(now, rf.bytes_complete), self._useful_connections())
        more = target - self._workers
        self._tasks.update(asyncio.ensure_future(self._worker(None)) for _ in range(more))

    def _useful_connections(self) -> int:
        rf = self.file.rf
        left = (self.file.size or 0) - (rf.bytes_complete if rf else 0)
        return max(1, -(-left // self.config.min_split))

    def _first_request(self) -> tuple[int, int | None]:
        """The opening range; the whole file when an SFTP stat could not tell its size."""
        unsized = self._sftp and self._stat_result[1] is None
        return (0, None if unsized else self.config.first_request)

    async def _stat(self) -> None:
        """SFTP sends no head: ask for the size and time first (a request without body)."""
        while isinstance(
            found := await stat(self.url, self.config, self.request, self._host, self.rank),
            TransferError,
        ):
            await self._transient(found, None)
        self._stat_result = found

    async def _worker(self, segment: tuple[int, int | None] | None) -> None:
        self._workers += 1
        try:
            if segment is None:
                segment = self._next_segment()
            while True:
                while segment is not None:
                    if (await self._fetch(*segment)).retire or self._surplus():
                        return
                    segment = self._next_segment()
                if not await self._idle():
                    return
                segment = self._next_segment()
        finally:
            self._workers -= 1

    def _surplus(self) -> bool:
        """More workers than the file may use now: this one leaves."""
        return self._width is not None and self._workers > max(1, self._width.target)

    async def _idle(self) -> bool:
        """Wait while every missing byte is asked for: True when a request ended or a
        moment passed (a slow one may be worth racing now), False when nothing is left
        to wait for."""
        rf = self.file.rf
        if rf is None or not self.file.ranges_ok or rf.is_complete or not self.segments.inflight:
            return False
        wake = self._wake
        if wake is None or wake.done():
            wake = self._wake = running_loop().create_future()
        await asyncio.wait([wake], timeout=_LOOK)
        return True

    def _next_segment(self) -> tuple[int, int | None] | None:
        """The next range to ask for (see ``Segments.next``)."""
        rf = self.file.rf
        if rf is None:
            return self._next_plain()
        if not self.file.ranges_ok:
            return None if self.segments.inflight or rf.is_complete else (0, self.file.size)
        paced = self.budget is not None and self.budget.limited()
        width = self._width
        # While the count may still grow, requests are sized for the most it may
        # reach: a long request taken early would hold the end of the file back.
        spread = width.cap if width is not None and width.growing else self._connections()
        found = self.segments.next(rf, spread, paced)
        if found is None:  # every missing byte is asked for: race a slow request?
            return self.tail.pick(self.segments.inflight, running_loop().time())
        return found

    def _next_plain(self) -> tuple[int, int | None] | None:
        """A small file of known size broke off: go on from where it stopped (or from 0).
        A body of unknown length goes on only from a server that honours ranges, with an
        open-ended range; from any other it is over."""
        file = self.file
        if not file.plain or self.segments.inflight or file.complete:
            return None
        if file.size is None:
            return (file.reached, None) if file.ranges_ok else None
        return (file.reached if file.ranges_ok else 0), file.size

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
            raise self._no_source()
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
                budget.attach(curl)
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
            if self.sources.several:
                await self._settle_source(stream, code, message)
            else:
                await self._settle(stream, code, message)
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
    def _ended_well(self, stream: Stream, code: int) -> bool:
        """Count the request's progress; True when it ended without a fault (most do:
        no coroutine settles them), else ``_settle`` decides what the fault means."""
        if stream.stop is Stop.OVERTAKEN:
            return True
        # Progress resets the failures, unless without ranges (a retry throws the bytes
        # away) or the request ended below the low-speed limit: a trickle that always
        # makes a little progress would otherwise retry for ever.
        if stream.pos > stream.start and self.file.ranges_ok and code != TIMED_OUT:
            self._failures = 0
        if stream.stop is Stop.RANGE_END or (code == 0 and stream.stop is None):
            if stream.end is None or (stream.ends_body and stream.pos >= stream.end):
                self.file.body_ended = True  # unknown length: the body ends when the server says
                return True
            return stream.pos > stream.start or stream.pos >= stream.end
        if stream.stop is Stop.BODY_END:
            self.file.body_ended = True
            return True
        return False

    async def _settle_source(self, stream: Stream, code: int, message: str) -> None:
        """A fault of one of several sources: that source is dropped when it disagrees,
        fails for good or keeps failing; the download fails when none is left."""
        source = stream.source
        assert source is not None
        try:
            await self._settle(stream, code, message)
        except _Restart as again:
            why = stream.why or ("content changed" if again.changed else "ranges are ignored")
            if not self.sources.drop(source, why):
                raise
        except TransferError as exc:
            if not self.sources.drop(source, str(exc)):
                raise
            self._failures = 0  # the other sources start afresh
        else:
            source.failures += 1
            err = self._last_error
            gone = source.failures > self.config.retries and err is not None
            if gone and err is not None and not self.sources.drop(source, str(err)):
                raise err

    def _no_source(self) -> TransportError:
        reasons = "; ".join(f"{url}: {why}" for url, why in self.sources.reasons().items())
        return TransportError(
            f"every source was dropped ({reasons})", web_error_status=WebErrorStatus.UNKNOWN
        )

    async def _settle(self, stream: Stream, code: int, message: str) -> None:
        """What a request that did not end well (``_ended_well``) means: retry later,
        restart or fail."""
        if stream.stop is Stop.RANGE_END or (code == 0 and stream.stop is None):
            # a clean end with nothing new for a range still open
            err: TransferError = TransportError(
                f"{self.url}: response ended before the range was complete",
                web_error_status=WebErrorStatus.CONNECTION_ABORTED,
            )
            await self._transient(err, None)
            return
        if stream.stop in (Stop.CHANGED, Stop.NO_RANGES):
            raise _Restart(changed=stream.stop is Stop.CHANGED)
        if stream.stop in (Stop.STORAGE, Stop.UNSUPPORTED):
            assert stream.error is not None
            raise stream.error
        if stream.stop in (Stop.BAD_RANGE, Stop.HTTP):
            head = stream.head
            if self._width is not None and head.status in (429, 503):
                self._width.busy()  # the server asks for fewer
            err, transient = refusal(stream.stop, head, self.url)
            if not transient:
                raise err
            await self._transient(err, head.retry_after if stream.stop is Stop.HTTP else None)
            return
        cerr, transient = curl_error(code, message, self.url)
        if not transient:
            raise cerr
        if self._width is not None and code == REFUSED:
            self._width.busy()
        await self._transient(cerr, None)

    async def _transient(self, err: TransferError, retry_after: float | None) -> None:
        """Back off (exponential, jittered, Retry-After honoured) or give up after N in a row."""
        self._failures += 1
        now = asyncio.get_running_loop().time()
        if self._failures == 1:
            self._failing_since = now
        self._last_error = err
        if self._failures > self.config.retries:
            err.attempts, err.retried_for = self._failures, now - self._failing_since
            raise err
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (self._failures - 1))
        import random  # here only: a failure's jitter, not every command's start-up

        delay *= random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max * 10))
        await asyncio.sleep(delay)

    # -- the file ---------------------------------------------------------------
    def _resumable(self) -> None:
        if self.on_resumable is not None:
            self.on_resumable()

    async def _resume(self) -> None:
        """The download an earlier run left (``run`` calls it when a control file says
        there is one; else the first response decides what file to make)."""
        put = await self.file.resume(self._resumable)
        if put is not None:
            self._put = put
            self.sources.decided(None, self.file.etag, self.file.last_modified)

    def _start_over(self, *, changed: bool) -> None:
        self.file.forget()
        self.sources.forget()
        self.has_restarted = True
        self.restarts += 1
        self.has_response_changed = self.has_response_changed or changed
        self._failures = 0

    # -- progress ---------------------------------------------------------------
    def _tick_soon(self) -> None:
        self._ticker = ticker(_TICK)
        self._ticker.join(self, self._tick)

    def _stop_ticks(self) -> None:
        if self._ticker is not None:
            self._ticker.leave(self)
            self._ticker = None

    def _tick(self) -> None:
        """Throttled progress reports and periodic checkpoints of data and bitmap,
        handed to the core's threads (a member of the loop's ticker, not a task: most
        small files end before a tick)."""
        sink = self.file.sink
        if sink is not None and sink.reap() and self.on_blocks is not None:
            self.on_blocks()  # runs the writer threads finished while no piece came
        self._report()
        now = asyncio.get_running_loop().time()
        if not self._flushed:
            self._flushed = now  # the first checkpoint one period in, not at the first tick
        if self._width is not None:
            self._widen(now)
        due = now - self._flushed >= self.config.durable_every
        if due and sink is not None:
            sink.checkpoint(self.config.durable)
            self._flushed = now

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.snapshot())
