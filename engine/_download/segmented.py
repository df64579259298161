"""One file over many ranged connections: probe, split, race the slow tail, check every 206.

Theory of operation
-------------------
The first request asks for ``bytes=0-(first_request-1)`` (a small file costs that one
request).  Its response tells the size, the validators and whether ranges work; the
C core's result file is created then, and the other connections start.  Each request
asks for a bounded range, so it ends cleanly and its connection stays alive; ranges
shrink as the file fills, so no range is split in flight, and a connection out of
work may race a slow request for its last bytes (``engine._download.tail``).  Every 206 must
start where asked and agree with the known size and validators, else its bytes are
thrown away.  A 200 to a ranged request means no range support: one connection from
zero.  A changed ETag/Last-Modified (If-Range) restarts the whole file: a result never
mixes two versions.  Blocks already complete in the bitmap are never fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pycurl

from engine._disk.core import CONTROL_SUFFIX, RangeFile, remove_partial
from engine._disk.space import check_room
from engine._download.adaptive import Width
from engine._download.checks import (
    check_response,
    missing_support,
    refusal,
    storable,
    unsupported,
)
from engine._download.segments import Segments, Stop, Stream
from engine._download.sinks import RangeSink, Sink, choose, resume
from engine._download.sources import Source, Sources
from engine._download.tail import WASTE, Tail, ahead, overtake
from engine._net.connections import PER_HOST, Slots
from engine._net.ratelimit import Budget
from engine._net.transport import (
    FtpReplies,
    HandlePool,
    RequestOptions,
    ResponseHead,
    configure,
    curl_error,
    file_time,
    is_ftp,
    is_sftp,
    new_multi,
    one_connection,
    set_range,
    unplain,
)
from engine._ops.validate import host_of
from engine._runtime.descriptors import budget
from engine._runtime.loop import being_cancelled, running_loop
from engine._runtime.ticker import Ticker, ticker
from engine.config import TransferConfig
from engine.errors import StorageError, TransferError, TransportError
from engine.values import BackgroundTransferPriority
from engine.web_error import WebErrorStatus

_MAX_RESTARTS = 3


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


_shared: dict[asyncio.AbstractEventLoop, tuple[Any, HandlePool, Slots]] = {}


def _multi_for_loop() -> tuple[Any, HandlePool, Slots]:
    """The running loop's multi handle, its pool of easy handles, and the slots its
    requests take (one engine loop per process: one of each)."""
    loop = running_loop()
    shared = _shared.get(loop)
    if shared is None:
        _forget_closed_loops()
        fds = budget()  # a socket a request: never more than the descriptors allow
        shared = _shared[loop] = (
            new_multi(max_total=fds.requests, max_host=min(64, fds.requests)),
            HandlePool(),
            Slots(per_host=min(64, fds.requests), total=fds.requests),
        )
    return shared


def _forget_closed_loops() -> None:
    """Let go of what loops closed since had: the multi's connections and their
    duplicates, the pool's handles.  Only the engine loop runs operations, but a
    program (the tests are one) may run downloads on loops of its own, one after
    another: each kept six descriptors open for the life of the process, and a
    thousand tests reached the 1024 that ``select`` takes."""
    for loop in [loop for loop in _shared if loop.is_closed()]:
        multi, pool, _ = _shared.pop(loop)
        pool.close()
        with contextlib.suppress(RuntimeError, OSError, pycurl.error):  # not this loop's
            multi.close_after_loop()


_DEFAULT_RANK = BackgroundTransferPriority.DEFAULT.rank


def _default_rank() -> int:
    """A download no operation drives waits for its slots as a DEFAULT one."""
    return _DEFAULT_RANK


async def _plain_finish(finish: Callable[[], Awaitable[None]]) -> None:
    await finish()


_LOOK = 0.1
"""Seconds between looks, while every missing byte is asked for, for a slow request to
race (a request that ends wakes the connections waiting at once)."""

_TICK = 0.2
"""Seconds between progress reports (and looks at whether a write-back is due)."""


class SegmentedDownload:
    """Downloads ``url`` into ``result``; resumes what an earlier run left on disk."""

    # State that starts the same for every download is declared here, at class level,
    # and set on the instance only when it changes: a mirror makes one of these a file.
    last_head: ResponseHead | None = None
    """The newest response head that was accepted, for get_response_information."""
    finishing = False
    """True once the result file is handed to the thread that finishes it."""
    restarts = 0
    """Times the download started over (content changed, or no ranges)."""
    size: int | None = None
    etag = ""
    last_modified = ""
    ranges_ok = True
    has_restarted = False
    has_response_changed = False
    finished = False
    rf: RangeFile | None = None
    """The range file of a file fetched in ranges (readers read it while it fills)."""
    sink: Sink | None = None
    """Where the file's bytes go (``engine._download.sinks``), once it is decided."""
    _put: Callable[[int, memoryview], int]
    """The sink's ``write``: the data path calls it without a layer between."""
    on_blocks: Callable[[], None] | None = None
    """Called when writes complete blocks (a reader may be waiting for them)."""
    on_resumable: Callable[[], None] | None = None
    """Called just before a control file is made or found: from then on, a crash
    leaves a download to resume."""
    _path: Path | None = None
    plain = False
    """A plain file (small, of unknown length, or without ranges): no bitmap."""
    _seen = 0
    """The bytes that had arrived when the sink was closed."""
    _body_ended = False  # unknown length: a response ended cleanly
    _in_round = False
    _on_wire = 0  # requests holding a slot (the rest of inflight wait for one)
    _stat_result: tuple[str, int | None] = ("", None)
    """SFTP: (time, size) of the file, from the stat at the start of a round."""
    _failures = 0
    _failing_since = 0.0  # loop time of the first of the failures in a row
    _workers = 0  # worker coroutines running
    _last_error: TransferError | None = None
    _ticker: Ticker | None = None
    budget: Budget | None = None
    """The rate limit its requests share (``engine._net.ratelimit``), if any."""
    _flushed = 0.0
    loose = False
    """The caller knows the expected checksum: other sources need only agree on the size."""
    new = False
    """Set when nothing of this download can be on disk yet (an operation's first run
    in the process that created it): ``run`` does not look for a control file, a
    lookup that in a folder being filled waits behind every file made there.  A file
    left under the same name by an operation no state database knows is replaced."""

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
        self._name = os.fspath(result)
        if isinstance(result, Path):
            self._path = result
        self.config = config or TransferConfig()
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
        """The result file (made a Path when first asked: a small file never is)."""
        path = self._path
        if path is None:
            path = self._path = Path(self._name)
        return path

    @property
    def reached(self) -> int:
        """Bytes that arrived: where a plain body reaches, a range file's progress."""
        sink = self.sink
        return self._seen if sink is None else sink.reached

    def snapshot(self) -> Snapshot:
        return Snapshot(
            (self.size or 0) if self.finished else self.reached,
            self.size or 0,
            self.has_restarted,
            self.has_response_changed,
            self._on_wire,
            self.tail.duplicated,
        )

    async def run(self) -> None:
        """Download until the result file is complete and renamed into place."""
        restarts = 0
        self._tick_soon()
        try:
            if not self.new and os.path.lexists(self._name + CONTROL_SUFFIX):
                await self._prepare()
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
                if self._complete():
                    self._stop_ticks()  # no flush may race the finish in its thread
                    await self.finisher(self._finish_durably)
                    self.finished = True
                    return
        except BaseException:
            self._keep()
            self._close()
            raise
        finally:
            self._stop_ticks()
            self._report()

    # -- rounds and workers ---------------------------------------------------
    async def _round(self) -> None:
        if self._sftp:
            await self._stat()
        tasks = self._tasks = set()  # prioritize() and _adopt() may add workers meanwhile
        self._in_round = True
        try:
            if self.size is None:
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
        if self._in_round and self.ranges_ok and self.rf is not None:
            more = min(self._connections(), self._useful_connections()) - 1
            self._tasks.update(asyncio.ensure_future(self._worker(None)) for _ in range(more))

    def _connections(self) -> int:
        """Connections the file may use now (fixed, or as ``_width`` has it)."""
        return self.config.connections if self._width is None else self._width.target

    def _widen(self, now: float) -> None:
        """An adaptive download at a tick: more workers when ``_width`` says so (the
        ones past its count leave after their request, see ``_worker``)."""
        rf = self.rf
        if self._width is None or not self._in_round or not self.ranges_ok or rf is None:
            return
        if self.budget is not None and self.budget.limited():
            return  # the rate limit is the bottleneck: more connections cannot pay
        target = min(self._width.tick(now, rf.bytes_complete), self._useful_connections())
        more = target - self._workers
        self._tasks.update(asyncio.ensure_future(self._worker(None)) for _ in range(more))

    def _first_request(self) -> tuple[int, int | None]:
        """The opening range; the whole file when an SFTP stat could not tell its size."""
        unsized = self._sftp and self._stat_result[1] is None
        return (0, None if unsized else self.config.first_request)

    async def _stat(self) -> None:
        """SFTP sends no head: ask for the size and time first (a request without body)."""
        multi, pool, slots = _multi_for_loop()
        while True:
            await slots.take(self._host, self.rank())
            curl = pool.take()
            try:
                configure(curl, self.url, self.config, [], self.request)
                curl.setopt(pycurl.NOBODY, 1)
                unplain(curl)
                await multi.perform(curl)
            except pycurl.error as exc:
                err, transient = curl_error(exc.args[0], exc.args[1], self.url)
                if not transient:
                    raise err from None
            else:
                size = int(curl.getinfo(pycurl.CONTENT_LENGTH_DOWNLOAD_T))
                # libcurl says -1 for an empty file: no size, so one unranged read to the end
                self._stat_result = (file_time(curl), size if size >= 0 else None)
                return
            finally:
                slots.give(self._host)
                pool.give(curl)
            await self._transient(err, None)

    # -- read-driven prioritisation ---------------------------------------------
    def prioritize(self, offset: int) -> None:
        """Fetch ``offset`` next: a reader waits for it (see ``Segments.prioritize``)."""
        wanted = self.segments.prioritize(offset, self.rf, self.size if self.ranges_ok else None)
        if wanted and self._in_round:  # the new connection starts now
            self._tasks.add(asyncio.ensure_future(self._worker(None)))

    def reader_done(self, offset: int) -> None:
        self.segments.reader_done(offset)

    def _useful_connections(self) -> int:
        left = (self.size or 0) - (self.rf.bytes_complete if self.rf else 0)
        return max(1, -(-left // self.config.min_split))

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
        rf = self.rf
        if rf is None or not self.ranges_ok or rf.is_complete or not self.segments.inflight:
            return False
        wake = self._wake
        if wake is None or wake.done():
            wake = self._wake = running_loop().create_future()
        await asyncio.wait([wake], timeout=_LOOK)
        return True

    def _next_segment(self) -> tuple[int, int | None] | None:
        """The next range to ask for (see ``Segments.next``)."""
        if self.rf is None:
            return self._next_plain()
        if not self.ranges_ok:
            return None if self.segments.inflight or self.rf.is_complete else (0, self.size)
        paced = self.budget is not None and self.budget.limited()
        width = self._width
        # While the count may still grow, requests are sized for the most it may
        # reach: a long request taken early would hold the end of the file back.
        spread = width.cap if width is not None and width.growing else self._connections()
        found = self.segments.next(self.rf, spread, paced)
        if found is None:  # every missing byte is asked for: race a slow request?
            return self.tail.pick(self.segments.inflight, running_loop().time())
        return found

    def _next_plain(self) -> tuple[int, int | None] | None:
        """A small file of known size broke off: go on from where it stopped (or from 0).
        A body of unknown length goes on only from a server that honours ranges
        (``_accept_unsized``), with an open-ended range; from any other it is over."""
        if not self.plain or self.segments.inflight or self._complete():
            return None
        if self.size is None:
            return (self.reached, None) if self.ranges_ok else None
        return (self.reached if self.ranges_ok else 0), self.size

    # -- one request ------------------------------------------------------------
    async def _fetch(self, start: int, end: int | None) -> Stream:
        """One request for ``[start, end)``; returns its stream once settled.

        It waits for a slot (``engine._net.connections``) in the plan, so no other
        connection asks for its bytes meanwhile (one may still take half of them:
        the range is put in the request once the slot is there)."""
        multi, pool, slots = _multi_for_loop()
        source = self.sources.pick(self.segments.inflight, running_loop().time())
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
            self.tail.ended(stream, running_loop().time())
            return stream
        try:  # from here the slot is given back whatever happens, a refused set-up too
            curl = pool.take()
            end = stream.end
            headers = self._request_headers(start, end, source)
            configure(curl, source.url, self.config, headers, self.request)
            if self._ftp or self._sftp:
                # FTP's replies make the head; SFTP has none: what the stat said stands in.
                stream.head.ftp = FtpReplies() if self._ftp else FtpReplies(*self._stat_result)
                set_range(curl, start, end)
            curl.setopt(pycurl.HEADERFUNCTION, stream.head.lines.append)
            curl.setopt(pycurl.WRITEFUNCTION, self._writer(stream), use_memoryview=True)
            one_connection(curl, self.rf is not None and not self._ftp and not self._sftp)
            code, message = 0, ""
            self._on_wire += 1
            budget = self.budget
            if budget is not None:
                budget.attach(curl)
            stream.started = running_loop().time()
            source.busy += 1
            try:
                await self._perform(multi, curl, stream)
            except pycurl.error as exc:
                code, message = exc.args[0], exc.args[1]
            finally:
                source.busy -= 1
                self._on_wire -= 1
                if budget is not None:
                    budget.detach(curl)
        finally:
            slots.give(host)
            inflight.remove(stream)
            now = running_loop().time()
            self.tail.ended(stream, now)
            self.sources.measured(source, stream.pos - stream.start, now - stream.started)
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        if stream.checked and stream.stop in (None, Stop.RANGE_END, Stop.HTTP):
            self.actual_url = str(curl.getinfo(pycurl.EFFECTIVE_URL) or self.url)
        pool.give(curl)
        if not stream.checked and code == 0 and stream.stop is None:
            self._check_head(stream)  # an empty body: the head is all there is
        if not self._ended_well(stream, code):
            if self.sources.several:
                await self._settle_source(stream, code, message)
            else:
                await self._settle(stream, code, message)
        return stream

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

    @staticmethod
    async def _perform(multi: Any, curl: Any, stream: Stream) -> None:
        """The transfer; one its rival overtook ends here as if it had ended well."""
        transfer = stream.transfer = multi.add_handle(curl)
        try:
            await transfer
        except asyncio.CancelledError:
            if stream.stop is not Stop.OVERTAKEN or being_cancelled():
                raise
        finally:
            stream.transfer = None

    def _ended_well(self, stream: Stream, code: int) -> bool:
        """Count the request's progress; True when it ended without a fault (most do:
        no coroutine settles them), else ``_settle`` decides what the fault means."""
        if stream.stop is Stop.OVERTAKEN:
            return True
        # Progress resets the failures, unless without ranges (a retry throws the bytes
        # away) or the request ended below the low-speed limit: a trickle that always
        # makes a little progress would otherwise retry for ever.
        if stream.pos > stream.start and self.ranges_ok and code != pycurl.E_OPERATION_TIMEDOUT:
            self._failures = 0
        if stream.stop is Stop.RANGE_END or (code == 0 and stream.stop is None):
            if stream.end is None or (stream.ends_body and stream.pos >= stream.end):
                self._body_ended = True  # unknown length: the body ends when the server says
                return True
            return stream.pos > stream.start or stream.pos >= stream.end
        if stream.stop is Stop.BODY_END:
            self._body_ended = True
            return True
        return False

    def _request_headers(self, start: int, end: int | None, source: Source) -> list[str]:
        if self.request.single_request or self._ftp or self._sftp:
            return list(self.headers)
        headers = [*self.headers, f"Range: bytes={start}-{'' if end is None else end - 1}"]
        validator = Sources.validator(source)
        if validator and (self.size is not None or start > 0):  # a body of unknown length too
            headers.append(f"If-Range: {validator}")
        return headers

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
        if self._width is not None and code == pycurl.E_COULDNT_CONNECT:
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

    # -- the data path --------------------------------------------------------
    def _writer(self, st: Stream) -> Callable[[memoryview], int | None]:
        def on_write(mv: memoryview) -> int | None:
            n = len(mv)
            held, end = st.held, st.end
            if held is not None and end is not None and st.pos + n <= end:
                held += mv  # the held body: it ends where the head said (_check_head)
                st.pos += n
                return None
            try:
                if st.stop is Stop.OVERTAKEN:
                    # Its rival has these bytes, and its transfer is cancelled; libcurl
                    # may still hand it pieces until the multi drops it.  They keep
                    # that mark (a range end written over it would make the cancel a
                    # cancel of the whole download, see _perform).
                    return 0
                if not st.checked and not self._check_head(st):
                    return 0
                if st.rival is not None:
                    return self._race(st, mv)
                pos, end = st.pos, st.end
                if end is not None and pos + n > end:
                    if end > pos:
                        self._write(pos, mv[: end - pos])
                    st.pos = end
                    st.stop = Stop.RANGE_END
                    return 0
                if self._put(pos, mv) and self.on_blocks is not None:
                    self.on_blocks()
            except StorageError as exc:
                st.stop, st.error = Stop.STORAGE, exc
                return 0
            st.pos = pos + n
            return None

        return on_write

    def _race(self, st: Stream, mv: memoryview) -> int | None:
        """A piece of a request that races another for its bytes (``engine._download.
        tail``): the bytes the rival wrote already are counted and dropped; a twin that
        gets ahead of the request it races ends that request."""
        rival = st.rival
        assert rival is not None
        pos, end = st.pos, st.end
        n = len(mv) if end is None else max(0, min(len(mv), end - pos))
        had = min(n, ahead(st))
        self.tail.duplicated += had
        if st.twin:
            st.wasted += had
            if st.wasted > WASTE and rival.stop is None:  # not catching up: give up
                rival.raced = True
                overtake(st)
                return 0
        if n > had:
            self._write(pos + had, mv[had:n])
        st.pos = pos + n
        if st.twin and st.pos > rival.pos and rival.stop is None:
            overtake(rival)
        if n < len(mv):
            st.stop = Stop.RANGE_END
            return 0
        return None

    def _write(self, offset: int, data: memoryview) -> None:
        if self._put(offset, data) and self.on_blocks is not None:
            self.on_blocks()

    def _check_head(self, st: Stream) -> bool:
        """Validate a response before its first byte is written (``engine._download.
        checks``); False stops the request."""
        st.checked = True
        head = st.head
        head.parse()
        if head.ftp is not None:
            head.as_http(st.start, st.end)
        source = st.source
        several = self.size is not None and self.sources.several and source is not None
        against = self.sources.expected(source, self) if several else self
        verdict = check_response(head, st.start, st.end, self, against)
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
            self._adopt(head, verdict.size, verdict.ranges, source)
        elif verdict.again:  # no ranges: the retry of a broken body starts over from zero
            self.has_restarted = True
            self.restarts += 1
        st.end = verdict.end
        st.ends_body = verdict.ends_body
        if self.require_ranges:
            missing = missing_support(self.size, self.ranges_ok)
            if missing is not None:
                st.stop, st.error = Stop.UNSUPPORTED, unsupported(self.url, missing)
                return False
        if self.plain and self.sink is not None:
            st.held = self.sink.hold(st.pos, st.end)  # the rest may fit in memory
        return True

    # -- the result file ------------------------------------------------------
    def _adopt(
        self, head: ResponseHead, size: int | None, ranges: bool, source: Source | None
    ) -> None:
        """The first response decided the download: create its result file."""
        self.size = size
        self.etag = storable(head.get("ETag"), 256)
        self.last_modified = storable(head.get("Last-Modified"), 128)
        self.sources.decided(source, self.etag, self.last_modified)
        self.ranges_ok = ranges
        self._body_ended = False
        if self.sink is not None:  # unknown length, a new response: its file starts again
            self.sink.close()
            self.sink = None
        if size is not None and size > self.config.first_request:
            check_room(self._name, size, self.reserve)  # before any of it is written
        plain = self.plain = size is None or size <= self.config.first_request or not ranges
        validators = (self.etag, self.last_modified)
        sink = self.sink = choose(self._name, size, plain, self.config, validators, self._resumable)
        self._put = sink.write
        if isinstance(sink, RangeSink):
            self.rf = sink.rf
            self._add_workers()

    def _resumable(self) -> None:
        if self.on_resumable is not None:
            self.on_resumable()

    async def _prepare(self) -> None:
        """The download an earlier run left, verified on a thread (``run`` calls it
        when a control file says there is one; else the first response decides what
        file to make: a small body is kept in memory, and the filer makes its file as
        it ends)."""
        sink = await resume(self.result, self.config)
        if sink is not None:
            self._resumable()
            self.sink, self._put, rf = sink, sink.write, sink.rf
            self.rf = rf
            self.size, self.etag, self.last_modified = rf.size, rf.etag, rf.last_modified
            self.sources.decided(None, rf.etag, rf.last_modified)
        # else a damaged control file was removed: start afresh

    def _start_over(self, *, changed: bool) -> None:
        self._close()
        remove_partial(self.result)
        self.rf, self.size = None, None
        self.etag = self.last_modified = ""
        self.sources.forget()
        self.ranges_ok = True
        self.has_restarted = True
        self.restarts += 1
        self.has_response_changed = self.has_response_changed or changed
        self._failures = 0

    def _complete(self) -> bool:
        sink = self.sink
        if sink is None:
            return False
        return sink.complete or (self.plain and self._body_ended)

    async def digest(self, algo: str) -> str:
        """The checksum of the complete download before it is renamed: a plain file
        still held whole in memory is hashed there, anything else on disk (a thread)."""
        assert self.sink is not None
        return await self.sink.digest(algo)

    async def _finish_durably(self) -> None:
        """Rename onto the final name; with durability "full", fsync the file first and
        the directory after."""
        self.finishing = True  # readers leave the result file to the finishing thread
        assert self.sink is not None
        self.size = await self.sink.finish(self.config.durable)  # (unknown length: now known)

    def _keep(self) -> None:
        """A plain file paused (or broken off) keeps what arrived for the next run to
        resume from (a restart from zero is left to servers without ranges)."""
        sink, size = self.sink, self.size
        if (
            sink is None
            or not self.plain
            or not self.ranges_ok
            or self.request.single_request  # a request that cannot ask for a range
            or size is None
            or not 0 < sink.reached < size
            or self.finishing
        ):
            return
        sink.keep(self.etag, self.last_modified, self._resumable)

    def _close(self) -> None:
        sink = self.sink
        if sink is not None:
            self._seen = sink.reached
            sink.close()
            self.sink = None
        self.plain = False

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
        sink = self.sink
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
