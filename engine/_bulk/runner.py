"""A bulk job's driver: small files over a lean path, the others as full operations.

Theory of operation
-------------------
Up to ``parallel`` files are in flight; the list is pulled one entry at a time as a
slot frees, so a list of a million lines starts at once and never sits in memory.
A small file costs no operation, no task and no SQLite statement of its own: a
pooled easy handle (options set once by ``transport.configure``, the engine's
secure defaults) gets its URL, its body gathers as libcurl's pieces in a list
(libcurl calls ``list.append``, C to C; they are joined once), and two callbacks
follow it: the transfer's end,
then the C filer's (``engine._disk.files``), which creates the partial file, writes
the body, makes it durable as asked and renames it onto the final name.  A final
name therefore only ever holds a complete, checked file; after a kill the partial
file is replaced by the next run, and a file already under its name is skipped.

The request asks for the first bytes of the file, ``bytes=0-(limit-1)``, where the
limit is the first request's size, or less at a high ``parallel``: the small files
in flight hold their bodies in memory, at most ``LEAN_MEMORY`` in all
(``lean_limit``).  A 200 is kept if its body has the length it announced, a 206 or 416 as
``engine._bulk.answer`` judges it (the checks of a full operation's first response),
and either must match the expected checksum.  A file larger than the range (a 206
stating a larger total) is promoted: a full ``DownloadOperation`` takes it over,
with ranged connections, a control file and a bitmap, and the range already received
written as its first (``sinks.hand_over``), so no byte is fetched twice.  A 200
longer than the range (libcurl's MAXFILESIZE stops it) promotes the file as it is.
Files with several sources, FTP and SFTP URLs, operations found unfinished in the
state directory and control files to continue go that way from the start.
Transient failures (a refused or broken connection, 408, 429, 5xx) are tried again
after a jittered exponential back-off, ``config.retries`` times; then, as every
other failure, the file fails alone and the job goes on.  A file waits, and never
fails, for what a full operation waits for (``engine._bulk.gate``): a network, one
that is not metered, free space above the reserve; its row says which meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

from engine._bulk.answer import Piece
from engine._bulk.hooks import Failure, Hooks, go_on
from engine._bulk.lean import Lean, LeanPath
from engine._bulk.table import CANCELED, JobTable
from engine._download.sinks import Seed
from engine._net.transport import new_multi
from engine._runtime.descriptors import budget
from engine._runtime.loop import running_loop
from engine.errors import TransferCanceled, TransferError
from engine.operation import DownloadOperation
from engine.values import BackgroundTransferStatus

__all__ = ["Failure", "Hooks", "Runner", "Todo", "go_on"]

S = BackgroundTransferStatus
_RUNNING, _COMPLETED, _ERROR = S.RUNNING.value, S.COMPLETED.value, S.ERROR.value
_WEB = ("http://", "https://")
"""URLs the lean path takes (any other case or scheme goes to a full operation)."""
_BATCH = 256
"""Rows pending before they are written (else every ``_FLUSH_EVERY`` seconds)."""
_FLUSH_EVERY = 0.5
"""Seconds between writes of the job's pending rows while it runs."""

Todo = tuple[str, str, "str | None", Sequence[str], "DownloadOperation | None", bool]
"""One file: URL, result file, expected checksum, more sources, an unfinished
operation that goes on, whether a control file found for it is continued."""


class Runner(LeanPath):
    """Drives one run of a job on the running loop (see the module)."""

    def __init__(self, hooks: Hooks, table: JobTable, items: Iterator[Todo], parallel: int) -> None:
        # a socket and the loop's duplicate of it a transfer: never more than the
        # descriptors allow (engine._runtime.descriptors), files wait for a slot instead
        self._sockets = budget().requests
        super().__init__(hooks, table, max(1, min(parallel, self._sockets // 2)))
        self._items = items
        self.running: dict[str, DownloadOperation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

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
            elif f in self._held:
                self._held.remove(f)
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
                f = Lean(url, path, checksum)
                self._flying[path] = f
                gate = self._gate
                why = None if gate is None else gate.blocked(url, path)
                if why is None:
                    self._send(f)
                else:
                    f.curl = f.timer = None
                    self._hold(f, why)
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

    # -- full operations -------------------------------------------------------------
    def _full(
        self,
        url: str,
        path: str,
        checksum: str | None,
        sources: Sequence[str],
        op: DownloadOperation | None,
        found: bool,
        seed: Seed | None = None,
    ) -> None:
        """A full operation for the file (it holds a slot until it ends)."""
        hooks = self.hooks
        try:
            if op is None:
                op = hooks.create(url, path, sources)
                if found:
                    op.continue_found()
                if seed is not None:
                    op.seed(seed)
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

    def _promote(self, f: Lean, piece: Piece | None) -> None:
        """A full operation takes ``f`` over (and its slot), with the ``piece`` of it
        that arrived as its first range (``DownloadOperation.seed``), if any."""
        del self._flying[f.path]
        seed = None if piece is None else Seed(piece.size, f.body, *piece[1:])
        self._full(f.url, f.path, f.sum, (), None, False, seed)

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
            look([*self.running.values(), *self.held()])

    def _stop(self) -> None:
        """Ctrl-C: small transfers are dropped (their rows say to fetch them again),
        full operations paused so the next run resumes them."""
        self._stopped = True
        if self._look is not None:
            self._look.cancel()
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

    def _close(self) -> None:
        for curl in self._free:
            curl.close()
        self._free.clear()
        multi, self._multi = self._multi, None
        if multi is not None:
            multi.close_after_loop()
