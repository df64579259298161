"""One file over many ranged connections: the schedule of its requests.

Theory of operation
-------------------
A round runs the first request, ``bytes=0-(first_request-1)``, itself (a small file
costs that one request); its response decides the file (``engine._download.file``),
and the other connections start then, as many as the bytes left are worth (or as
``engine._download.adaptive`` finds pays).  Each connection is a worker that asks
``_next_segment`` for a bounded range (``engine._download.segments``) and fetches it
(``engine._download.fetch``), so it ends cleanly and its connection stays alive;
ranges shrink as the file fills, so no range is split in flight, and a worker out of
work may race a slow request for its last bytes (``engine._download.tail``) or wait
for one to end.  A reader's offset goes first (``prioritize``).  A request that did
not end well is retried by its worker after a back-off (``engine._download.retries``);
a change of content or ranges ignored restarts the whole file (a result never mixes
two versions), at most ``_MAX_RESTARTS`` times.  Blocks already complete in the
bitmap are never fetched again.  A tick reports progress and checkpoints the file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from engine._disk.core import CONTROL_SUFFIX
from engine._download.fetch import Fetcher, Snapshot
from engine._download.retries import Restart
from engine._download.sinks import plant
from engine._runtime.loop import running_loop
from engine._runtime.ticker import Ticker, ticker
from engine.errors import TransportError
from engine.web_error import WebErrorStatus

_MAX_RESTARTS = 3

_LOOK = 0.1
"""Seconds between looks, while every missing byte is asked for, for a slow request to
race (a request that ends wakes the connections waiting at once)."""

_TICK = 0.2
"""Seconds between progress reports (and looks at whether a write-back is due)."""


class SegmentedDownload(Fetcher):
    """Downloads ``url`` into ``result``; resumes what an earlier run left on disk.

    Its requests, each from source and slot to its settled end, are ``Fetcher``'s
    (``engine._download.fetch``); this class schedules them and runs the rounds."""

    _in_round = False
    _workers = 0
    """Connections of the round: worker tasks not yet ended, started or still
    scheduled (counted when scheduled: a tick between the scheduling and the start
    would see too few and add more), and the first request while it runs."""
    _ticker: Ticker | None = None
    _flushed = 0.0

    # -- public ---------------------------------------------------------------
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
            if self.seed is not None:  # megabytes: in a thread, as a resume's checks
                await self._plant()
            if not self.new and os.path.lexists(file.name + CONTROL_SUFFIX):
                await self._resume()
            while True:
                try:
                    await self._round()
                except Restart as again:
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

    async def _plant(self) -> None:
        """Keep the seed as the file's first range; its bytes are let go of at once (not
        held for the rest of the download)."""
        seed, self.seed = self.seed, None
        assert seed is not None
        await plant(Path(self.file.name), seed, self.config, self.reserve)

    def prioritize(self, offset: int) -> None:
        """Fetch ``offset`` next: a reader waits for it (see ``Segments.prioritize``)."""
        file = self.file
        wanted = self.segments.prioritize(offset, file.rf, file.size if file.ranges_ok else None)
        if wanted and self._in_round:  # the new connection starts now
            self._spawn(1)

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
                self._workers += 1
                try:
                    first = await self._fetch(*self._first_request())
                finally:
                    self._workers -= 1
                segment = None if first.retire else self._next_segment()
                if segment is not None:
                    self._spawn(1, segment)
            else:
                segment = self._next_segment()
                if segment is None:
                    return
                self._spawn(1, segment)
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
            self._spawn(min(self._connections(), self._useful_connections()) - self._workers)

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
        self._spawn(target - self._workers)

    def _useful_connections(self) -> int:
        rf = self.file.rf
        left = (self.file.size or 0) - (rf.bytes_complete if rf else 0)
        return max(1, -(-left // self.config.min_split))

    def _first_request(self) -> tuple[int, int | None]:
        """The opening range; the whole file when an SFTP stat could not tell its size."""
        unsized = self._sftp and self._stat_result[1] is None
        return (0, None if unsized else self.config.first_request)

    def _spawn(self, count: int, segment: tuple[int, int | None] | None = None) -> None:
        """Schedule ``count`` workers (none when ``count`` < 1), the first on ``segment``."""
        for _ in range(count):
            self._workers += 1
            task = asyncio.ensure_future(self._worker(segment))
            task.add_done_callback(self._worker_ended)  # also when cancelled before it ran
            self._tasks.add(task)
            segment = None

    def _worker_ended(self, _task: asyncio.Future[None]) -> None:
        self._workers -= 1

    async def _worker(self, segment: tuple[int, int | None] | None) -> None:
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
        if self._retries is not None:
            self._retries.failures = 0

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
