"""*Beyond*: many files as one persisted job (``BackgroundDownloader.create_downloads``).

A ``DownloadOperation`` a file costs a state row, a control logic and a task each,
several times what the request of a 64 KiB file costs.  A bulk job keeps one row a
file in the state database, written in batches, and fetches small files over a
lean path (``engine._bulk.runner``): one request, the body in memory, written and
renamed onto its name by the C filer.  A file larger than the first request
(``TransferConfig.first_request``) becomes a full operation, with ranges, a control
file and a bitmap.  Each file can still be listed, cancelled on its own, or handed
to a full operation.  ``bgtransfer mirror`` is built on it.  See docs/api.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from engine._bulk.hooks import Failure, Hooks, go_on
from engine._bulk.plan import already_complete
from engine._bulk.runner import Runner, Todo
from engine._bulk.table import JobTable
from engine._runtime.loop import engine_here, engine_loop, run
from engine._state.oplock import OpLock
from engine._state.store import Store
from engine.errors import InvalidRequestError, InvalidStateError
from engine.operation import DownloadOperation
from engine.values import BackgroundTransferStatus

if TYPE_CHECKING:
    from engine.downloader import BackgroundDownloader

_COMPLETED = BackgroundTransferStatus.COMPLETED.value


def _lock_key(job: str) -> str:
    """The job's place in the state directory's lock file, as an operation's guid."""
    return hashlib.sha256(f"bulk job {job}".encode()).hexdigest()[:32]


T = TypeVar("T")

__all__ = [
    "BulkDownload",
    "BulkEntry",
    "BulkFile",
    "BulkResult",
    "Failure",
    "Todo",
    "already_complete",
    "go_on",
]


class BulkEntry(NamedTuple):
    """One file of a bulk job: its URL, where it goes, and optionally the checksum it
    must match (``"sha256=<hex>"``...) and more URLs of the same content."""

    uri: str
    result_file: os.PathLike[str] | str
    checksum: str | None = None
    sources: tuple[str, ...] = ()


class BulkFile(NamedTuple):
    """A file of a job as the state database has it."""

    result_file: Path
    requested_uri: str
    status: BackgroundTransferStatus
    """IDLE or RUNNING while to be fetched, then COMPLETED, CANCELED or ERROR."""
    size: int
    error: str | None
    guid: uuid.UUID | None
    """The full operation that took the file over (a large file), if any."""


class BulkResult(NamedTuple):
    """What a run did: files and bytes downloaded, files found complete, files
    cancelled, and the failures (each with its typed error)."""

    downloaded: int
    size: int
    skipped: int
    canceled: int
    failed: list[Failure]


class BulkDownload:
    """A bulk job of a downloader (made by ``BackgroundDownloader.create_downloads``):
    ``run`` fetches its files, up to ``parallel`` at a
    time.  Its entries are read lazily, as files finish: a list of a million lines
    starts at once and is never held whole.  A file already under its name (and
    matching its checksum, if it has one) is skipped, so running the job again, in
    this process or the next, fetches only what is missing."""

    def __init__(
        self,
        downloader: BackgroundDownloader,
        store: Store,
        job: str,
        entries: Iterable[BulkEntry],
        parallel: int,
        hooks: Hooks,
    ) -> None:
        if parallel < 1:
            raise InvalidRequestError(f"parallel must be at least 1, not {parallel}")
        self._downloader = downloader
        self._entries = entries
        self._parallel = parallel
        self._hooks = hooks
        self._table = JobTable(store, job)
        self._runner: Runner | None = None
        self._skipped = 0
        self._left = 0  # files cancelled before this run: left out of it
        self.paused: list[DownloadOperation] = []
        """The full operations an interrupted run paused (Ctrl-C): a new run resumes them."""

    @property
    def job(self) -> str:
        """The job's name: creating a job of the same name again continues it."""
        return self._table.job

    def files(self) -> list[BulkFile]:
        """Every file read so far, with its state (from the state database)."""
        return [
            BulkFile(
                Path(path),
                uri,
                BackgroundTransferStatus(status),
                size,
                error,
                uuid.UUID(guid) if guid else None,
            )
            for path, uri, status, size, error, guid in self._on_engine(self._table.files)
        ]

    def run(self, planned: Iterator[Todo] | None = None) -> BulkResult:
        """Fetch every file; blocks until the last one ended (failures do not raise:
        they are in the result).  Ctrl-C drops the small files in flight and pauses the
        full operations: running the job again continues."""
        if engine_here() is not None:
            raise InvalidStateError("run() blocks: on the engine loop, await run_async()")
        return run(self.run_async(planned))

    async def run_async(self, planned: Iterator[Todo] | None = None) -> BulkResult:
        """``run`` for a coroutine (driven on the engine's loop whatever loop awaits it).

        ``planned``: the files as the driver takes them, instead of the entries, for a
        caller that checks its list itself (``bgtransfer mirror``: ``skip`` then
        records those it found complete)."""
        if engine_here() is None:
            return await asyncio.wrap_future(engine_loop().submit(self.run_async(planned)))
        if self._runner is not None:
            raise InvalidStateError(f"bulk job {self.job!r} is running already")
        lock = OpLock(self._table.store.state_dir, _lock_key(self.job))
        if not lock.acquire():  # two runs would race on the same partial files
            raise InvalidStateError(f"bulk job {self.job!r} is running in another process")
        try:
            return await self._run(planned)
        finally:
            lock.release()

    async def _run(self, planned: Iterator[Todo] | None) -> BulkResult:
        self._skipped = self._left = 0
        todo = self._plan() if planned is None else planned
        runner = self._runner = Runner(self._hooks, self._table, todo, self._parallel)
        try:
            await runner.run()
        except asyncio.CancelledError:
            self.paused = list(runner.running.values())
            raise
        finally:
            self._runner = None
        return BulkResult(
            runner.downloaded,
            runner.size,
            self._skipped,
            runner.canceled + self._left,
            runner.failed,
        )

    def skip(self, path: str, uri: str, checksum: str | None) -> None:
        """Record a file found complete under its name (for ``planned`` runs)."""
        self._table.add(path, uri, checksum, _COMPLETED)
        self._skipped += 1

    def cancel(self, result_file: os.PathLike[str] | str) -> None:
        """Cancel one file: in flight, its transfer stops; not reached yet, it is never
        fetched (this run and the job's later ones).  A file being written already ends
        complete."""
        path = os.path.abspath(os.fspath(result_file))

        def cancel() -> None:
            self._table.cancel(path)
            if self._runner is not None:
                self._runner.cancel(path)

        self._on_engine(cancel)

    def operation(self, result_file: os.PathLike[str] | str) -> DownloadOperation:
        """The full operation of one file, made now if it has none (IDLE: start it, or
        run the job, which lets it go on): control file, bitmap, ranges, pause and
        resume of its own.  Refused while the file is in flight on the lean path."""
        path = os.path.abspath(os.fspath(result_file))
        for op in self._downloader.get_current_downloads(include_groups=True):
            if os.fspath(op.result_file) == path:
                return op
        for f in self.files():
            if os.fspath(f.result_file) == path:
                if f.status is BackgroundTransferStatus.RUNNING and self._runner is not None:
                    raise InvalidStateError(f"{path} is being fetched; cancel it first")
                return self._hooks.create(f.requested_uri, path, ())
        raise InvalidRequestError(f"{path}: no such file in bulk job {self.job!r}")

    def forget(self) -> None:
        """Drop the job's rows from the state database (its files stay)."""
        if self._runner is not None:
            raise InvalidStateError(f"bulk job {self.job!r} is running")
        self._on_engine(self._table.forget)

    def _on_engine(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the engine thread, where a run adds the job's rows (see
        ``JobTable.flush``), waiting for its result."""
        if engine_here() is not None:
            return fn()

        async def call() -> T:
            return fn()

        return engine_loop().submit(call()).result()

    def _plan(self) -> Iterator[Todo]:
        """The entries as the runner takes them: files complete already are skipped,
        files with an unfinished operation go on with it, cancelled ones stay so."""
        current = {
            os.fspath(op.result_file): op
            for op in self._downloader.get_current_downloads(include_groups=True)
        }
        canceled = self._table.canceled()
        for entry in self._entries:
            uri, result, checksum, sources = entry
            path = os.path.abspath(os.fspath(result))
            if path in canceled:
                self._left += 1
                continue
            op = current.get(path)
            if op is None and already_complete(path, checksum):
                self.skip(path, uri, checksum)
                continue
            yield uri, path, checksum, tuple(sources), op, False
