"""A bulk job's driver: small files over a lean path, the others as full operations.

Theory of operation
-------------------
Up to ``parallel`` files are in flight; the list is pulled one entry at a time as a
slot frees, so a list of a million lines starts at once and never sits in memory.
A small file costs no operation, no task and no SQLite statement of its own: a
pooled easy handle (options set once by ``transport.configure``, the engine's
secure defaults) gets its URL, its body gathers in a ``bytearray`` (libcurl calls
``bytearray.extend``, C to C), and two callbacks follow it: the transfer's end,
then the C filer's (``engine._disk.files``), which creates the partial file, writes
the body, makes it durable as asked and renames it onto the final name.  A final
name therefore only ever holds a complete, checked file; after a kill the partial
file is replaced by the next run, and a file already under its name is skipped.

A response is kept only if it is a 200 (a 206 to a request without a range is a
lie), its body has the length it announced and matches the expected checksum.  A
response longer than the first request (libcurl's MAXFILESIZE stops it, announced
or not) promotes the file: a full ``DownloadOperation`` takes it over, with ranged
connections, a control file and a bitmap.  Files with several sources, FTP and SFTP
URLs, operations found unfinished in the state directory and control files to
continue go that way from the start.  Transient failures (a refused or broken
connection, 408, 429, 5xx) are tried again after a jittered exponential back-off,
``config.retries`` times; then, as every other failure, the file fails alone and the
job goes on.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import pycurl

from engine._bulk.table import CANCELED, JobTable
from engine._disk.checksum import new_hash, parse
from engine._disk.files import filer
from engine._disk.tuning import Tuning
from engine._net.ratelimit import Budget
from engine._net.transport import RequestOptions, configure, curl_error, http_error, new_multi
from engine._runtime.descriptors import budget
from engine._runtime.loop import running_loop
from engine.config import TransferConfig
from engine.errors import IntegrityError, TransferCanceled, TransferError, TransportError
from engine.operation import DownloadOperation
from engine.values import BackgroundTransferStatus
from engine.web_error import WebErrorStatus

S = BackgroundTransferStatus
_RUNNING, _COMPLETED, _ERROR = S.RUNNING.value, S.COMPLETED.value, S.ERROR.value
_RESUMABLE = (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS)
_CODE, _LENGTH = pycurl.RESPONSE_CODE, pycurl.CONTENT_LENGTH_DOWNLOAD_T
_WRITE, _MAX, _URL = pycurl.WRITEFUNCTION, pycurl.MAXFILESIZE_LARGE, pycurl.URL
_TOO_BIG = pycurl.E_FILESIZE_EXCEEDED
_WEB = ("http://", "https://")
"""URLs the lean path takes (any other case or scheme goes to a full operation)."""
_BATCH = 256
"""Rows pending before they are written (else every ``_FLUSH_EVERY`` seconds)."""
_FLUSH_EVERY = 0.5
"""Seconds between writes of the job's pending rows while it runs."""

Todo = tuple[str, str, "str | None", Sequence[str], "DownloadOperation | None", bool]
"""One file: URL, result file, expected checksum, more sources, an unfinished
operation that goes on, whether a control file found for it is continued."""


class Failure(NamedTuple):
    """A file that failed: its result file, URL, error, and operation if it had one."""

    result_file: str
    requested_uri: str
    error: TransferError
    op: DownloadOperation | None

    @property
    def method(self) -> str:
        """The operation's method; "" for a small file, which kept no partial data."""
        return self.op.method if self.op is not None else ""


class Hooks(NamedTuple):
    """What the driver needs from the downloader and the caller."""

    create: Callable[[str, str, Sequence[str]], DownloadOperation]
    config: TransferConfig
    headers: list[str]
    request: RequestOptions | None
    lean: bool
    """Whether small files may take the lean path at all (a plain GET downloader)."""
    budget: Budget | None = None
    """The job's part of the downloader's rate limit, which small files take from."""
    progress: Callable[[DownloadOperation], None] | None = None
    watch: Callable[[DownloadOperation], None] | None = None
    ended: Callable[[int, bool], None] | None = None
    """A lean file ended: its size, whether it completed (for a view: None when quiet)."""
    look: Callable[[Iterable[DownloadOperation]], None] | None = None
    """Called every ``look_every`` seconds with the full operations in flight."""
    look_every: float = 2.0


def go_on(op: DownloadOperation, progress: Any) -> None:
    """Let an operation found in the state directory continue, whatever it waits for."""
    if op.status is S.ERROR:
        op.resume()  # run again: try again from the bitmap
        op.attach(progress)
        return
    op.attach(progress)
    if op.status in _RESUMABLE:
        op.resume()


class _Lean:
    """A small file in flight."""

    __slots__ = ("body", "curl", "path", "since", "sum", "timer", "tries", "url")

    curl: Any
    body: bytearray
    timer: asyncio.TimerHandle | None
    since: float
    """When the first of the failures in a row happened."""

    def __init__(self, url: str, path: str, checksum: str | None) -> None:
        # the other fields are set by _send (and since by _retry): a file pays for each
        self.url = url
        self.path = path
        self.sum = checksum
        self.tries = 0


class Runner:
    """Drives one run of a job on the running loop (see the module)."""

    def __init__(self, hooks: Hooks, table: JobTable, items: Iterator[Todo], parallel: int) -> None:
        self.hooks = hooks
        self.table = table
        self.downloaded = self.size = self.canceled = 0
        self.failed: list[Failure] = []
        self._items = items
        # a socket and the loop's duplicate of it a transfer: never more than the
        # descriptors allow (engine._runtime.descriptors), files wait for a slot instead
        self._sockets = budget().requests
        self._parallel = max(1, min(parallel, self._sockets // 2))
        self._busy = 0  # slots taken: transfers, back-offs and full operations
        self._writing = 0  # bodies handed to the filer, not written yet
        self._more = True
        self._flying: dict[str, _Lean] = {}
        self.running: dict[str, DownloadOperation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel: set[str] = set()
        self._free: list[Any] = []
        self._limit = hooks.config.first_request
        self._durable = hooks.config.durable
        self._tuning = Tuning.of(hooks.config)
        self._multi: Any = None
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._filer = filer()
        self._budget = hooks.budget or Budget()
        self._stopped = False
        self._drained: asyncio.Future[None] | None = None  # set once stopped and written
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> None:
        """Every file to its end; cancelled (Ctrl-C): transfers dropped, operations
        paused, rows written."""
        loop = self._loop = running_loop()
        self._done = loop.create_future()
        total = min(max(64, self._parallel * 2), self._sockets)
        self._multi = new_multi(max_total=total, max_host=self._parallel)
        self._timer = loop.call_later(_FLUSH_EVERY, self._tick)
        looking = None
        if self.hooks.look is not None:
            looking = loop.create_task(self._looking())
        try:
            self._fill()
            await self._done
        except BaseException:  # Ctrl-C, or the list failed: nothing more starts
            self._stop()
            if self._writing:  # bodies in the filer's threads: the run ends after them,
                # so no partial file is left behind it and their rows say complete
                self._drained = loop.create_future()
                await self._drained
            raise
        finally:
            self._timer.cancel()
            if looking is not None:
                looking.cancel()
            self.table.flush()
            self._close()

    def cancel(self, path: str) -> None:
        """Cancel one file (on the loop): in flight, running, or still to come."""
        f = self._flying.get(path)
        if f is not None:
            if f.curl is not None:
                self._drop(f.curl)  # its end sees the future cancelled
            elif f.timer is not None:
                f.timer.cancel()
                self._lean_over(f, CANCELED)
            return  # else its body is being written: too late to cancel
        op = self.running.get(path)
        if op is not None:
            op.cancel()
            return
        self._cancel.add(path)

    def _fill(self) -> None:
        """Start files while slots are free, pulling the list as it goes."""
        if self._stopped:
            return
        lean = self.hooks.lean
        new, job = self.table.new, self.table.job
        while self._more and self._busy < self._parallel and self._writing < 4 * self._parallel:
            try:
                item = next(self._items, None)
            except Exception as exc:  # the caller's list failed (unreadable, say): the run ends
                self._more = False
                self._end(exc)
                return
            if item is None:
                self._more = False
                break
            url, path, checksum, sources, op, found = item
            if path in self._cancel:
                self.table.add(path, url, checksum, CANCELED)
                self.canceled += 1
                continue
            new.append((job, path, url, checksum, _RUNNING))
            self._busy += 1
            if op is None and not sources and lean and not found and url.startswith(_WEB):
                f = _Lean(url, path, checksum)
                self._flying[path] = f
                self._send(f)
            else:
                self._full(url, path, checksum, sources, op, found)
        if len(new) >= _BATCH or len(self.table.changed) >= _BATCH:
            self.table.flush()  # rows are written as they are read, a batch at a time
        if not self._busy and not self._more and not self._writing:
            self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        done = self._done
        if done is not None and not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    # -- the lean path -----------------------------------------------------------------
    def _send(self, f: _Lean) -> None:
        f.timer = None
        url = f.url
        https = url[4] == "s"
        if self._free and self._free[-1].bgt_https is https:
            curl = self._free.pop()
            curl.setopt(_URL, url)  # every other option stays as configure set it
        else:
            curl = self._free.pop() if self._free else pycurl.Curl()
            hooks = self.hooks
            configure(curl, url, hooks.config, hooks.headers, hooks.request)
            curl.setopt(_MAX, self._limit)  # a larger body stops: the file is promoted
            curl.bgt_https = https
        body = f.body = bytearray()
        curl.setopt(_WRITE, body.extend, use_memoryview=True)
        f.curl = curl
        self._budget.pace(curl, self._multi, body.__len__)
        self._multi.add_handle(curl).add_done_callback(functools.partial(self._ended, f))

    def _ended(self, f: _Lean, transfer: asyncio.Future[Any]) -> None:
        """The transfer of ``f`` ended: check it, then write it, retry, promote or fail."""
        curl, f.curl = f.curl, None
        self._budget.detach(curl)
        if self._stopped:  # Ctrl-C: the run is over (and its handles closed)
            return
        status = curl.getinfo(_CODE)
        length = curl.getinfo(_LENGTH)
        self._free.append(curl)
        if transfer.cancelled():
            self._lean_over(f, CANCELED)
            return
        exc = transfer.exception()
        body = f.body
        if exc is not None:
            code, message = exc.args[0], exc.args[1]
            if code == _TOO_BIG:
                del self._flying[f.path]
                self._full(f.url, f.path, f.sum, (), None, False)  # takes over the slot
                return
            err, transient = curl_error(code, message, f.url)
            self._retry(f, err, None) if transient else self._fail(f, err)
            return
        if status != 200:
            if status == 206 or status < 300:
                self._fail(f, _lie(f.url, f"HTTP {status} where the whole file was asked for"))
                return
            herr, transient = http_error(status, f.url)
            if transient:
                self._retry(f, herr, curl.getinfo(pycurl.RETRY_AFTER) or None)
            else:
                self._fail(f, herr)
            return
        if length >= 0 and length != len(body):
            err = _lie(f.url, f"{len(body)} bytes where Content-Length said {length}")
            self._retry(f, err, None)
            return
        if f.sum is not None and not self._matches(f):
            return
        try:
            written = self._filer.start(
                -1, f.path, body, 0, durable=self._durable, tuning=self._tuning, loop=self._loop
            )
        except TransferError as refused:
            self._fail(f, refused)
            return
        self._busy -= 1  # the slot's connection is free while the filer writes
        self._writing += 1
        written.add_done_callback(functools.partial(self._written, f, len(body)))
        self._fill()

    def _matches(self, f: _Lean) -> bool:
        assert f.sum is not None
        algo, digest = parse(f.sum)
        h = new_hash(algo)
        h.update(f.body)
        got = h.hexdigest()
        if got == digest:
            return True
        self._fail(f, IntegrityError(f"{f.path}: {algo} is {got}, expected {digest}"))
        return False

    def _written(self, f: _Lean, size: int, written: asyncio.Future[None]) -> None:
        writing = self._writing
        self._writing = writing - 1
        path = f.path
        del self._flying[path]
        exc = None if written.cancelled() else written.exception()
        if exc is None:
            self.downloaded += 1
            self.size += size
            self.table.changed.append((_COMPLETED, size, None, None, self.table.job, path))
        else:
            err = exc if isinstance(exc, TransferError) else TransportError(str(exc))
            self.failed.append(Failure(f.path, f.url, err, None))
            self.table.change(f.path, _ERROR, 0, str(err))
        ended = self.hooks.ended
        if ended is not None:
            ended(size, exc is None)
        if self._stopped:
            if writing == 1 and self._drained is not None:
                self._drained.set_result(None)
            return
        if writing >= 4 * self._parallel or not self._more:  # else _ended pulled already
            self._fill()

    def _retry(self, f: _Lean, err: TransferError, retry_after: float | None) -> None:
        """Back off (exponential, jittered, Retry-After honoured), or fail after
        ``config.retries`` tries in a row."""
        config = self.hooks.config
        now = running_loop().time()
        f.tries += 1
        if f.tries == 1:
            f.since = now
        if f.tries > config.retries:
            err.attempts, err.retried_for = f.tries, now - f.since
            self._fail(f, err)
            return
        delay = min(config.backoff_max, config.backoff_base * 2 ** (f.tries - 1))
        delay *= random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, config.backoff_max * 10))
        f.timer = running_loop().call_later(delay, self._send, f)

    def _fail(self, f: _Lean, err: TransferError) -> None:
        self.failed.append(Failure(f.path, f.url, err, None))
        self._lean_over(f, _ERROR, str(err))

    def _lean_over(self, f: _Lean, status: int, error: str | None = None) -> None:
        """``f`` ended without a file (failed or cancelled): its slot is free."""
        del self._flying[f.path]
        if status == CANCELED:
            self.canceled += 1
        self.table.change(f.path, status, 0, error)
        self._busy -= 1
        ended = self.hooks.ended
        if ended is not None and status != CANCELED:
            ended(0, False)
        self._fill()

    # -- full operations -------------------------------------------------------------
    def _full(
        self,
        url: str,
        path: str,
        checksum: str | None,
        sources: Sequence[str],
        op: DownloadOperation | None,
        found: bool,
    ) -> None:
        """A full operation for the file (it holds a slot until it ends)."""
        hooks = self.hooks
        try:
            if op is None:
                op = hooks.create(url, path, sources)
                if found:
                    op.continue_found()
                if checksum:
                    op.expected_checksum = checksum
            if hooks.watch is not None:
                hooks.watch(op)
            # the blocking API's start: start_async would cancel the download with its task
            if op.status is S.IDLE:
                op.start(hooks.progress)
            else:
                go_on(op, hooks.progress)
        except TransferError as exc:
            self.failed.append(Failure(path, url, exc, op))
            self.table.change(path, _ERROR, 0, str(exc))
            self._busy -= 1
            return
        self.running[path] = op
        task = running_loop().create_task(self._follow(path, op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, path: str, op: DownloadOperation) -> None:
        guid = str(op.guid)
        try:
            await op.wait_async()
        except TransferCanceled:
            self.canceled += 1
            self.table.change(path, CANCELED, 0, None, guid)
        except TransferError as exc:
            self.failed.append(Failure(path, op.requested_uri, exc, op))
            self.table.change(path, _ERROR, 0, str(exc), guid)
        else:
            size = op.progress.bytes_received
            self.downloaded += 1
            self.size += size
            self.table.change(path, _COMPLETED, size, None, guid)
        # cancelled (Ctrl-C): the download goes on, and stays in running to be paused
        del self.running[path]
        self._busy -= 1
        self._fill()

    # -- housekeeping ----------------------------------------------------------------
    def _tick(self) -> None:
        self.table.flush()
        self._timer = running_loop().call_later(_FLUSH_EVERY, self._tick)

    async def _looking(self) -> None:
        look = self.hooks.look
        assert look is not None
        while True:
            await asyncio.sleep(self.hooks.look_every)
            look(self.running.values())

    def _stop(self) -> None:
        """Ctrl-C: small transfers are dropped (their rows say to fetch them again),
        full operations paused so the next run resumes them."""
        self._stopped = True
        for f in self._flying.values():
            if f.curl is not None:
                self._budget.detach(f.curl)  # its handle is closed with the run
                self._drop(f.curl)
            if f.timer is not None:
                f.timer.cancel()
        for task in self._tasks:
            task.cancel()
        for op in list(self.running.values()):
            if op.status in (S.RUNNING, S.IDLE) and op.method == "GET":
                try:  # noqa: SIM105
                    op.pause()
                except TransferError:  # it ended meanwhile
                    pass

    def _drop(self, curl: Any) -> None:
        """Stop a transfer; one that ended already (its callback still to run) is let be."""
        try:  # noqa: SIM105
            self._multi.remove_handle(curl)
        except RuntimeError:  # not registered any more: it ended meanwhile
            pass

    def _close(self) -> None:
        for curl in self._free:
            curl.close()
        self._free.clear()
        multi, self._multi = self._multi, None
        if multi is not None:
            multi.close_after_loop()


def _lie(url: str, what: str) -> TransportError:
    return TransportError(
        f"{url}: {what}", web_error_status=WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE
    )
