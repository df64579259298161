"""One shard on one worker: the mirror engine of the worker's own process.

The task runs where Dask put it, in a worker thread.  Its operations live in a
state directory local to the worker (its ``local_directory``: never SQLite on a
network file system), its files in the destination every worker sees, staged as
``_ledger`` says.  A shard's record in the destination is what says it ended, so a
run of a shard that ended with nothing failed, whose files are all there, returns
that record without downloading or checking anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    Credential,
    DownloadOperation,
    Durability,
)
from engine.bulk import already_complete
from engine.cli.commands import mirror_files
from engine.cli.names import Entry
from engine.cli.views import ENDED, MirrorView
from engine.cli.words import describe
from engine.cluster._ledger import Ledger
from engine.cluster._shards import Shard

S = BackgroundTransferStatus
TOPIC = "bgtransfer-mirror"
"""The Dask event topic of running shards' progress (one for every mirror: a topic's
events are kept on the scheduler, a bounded log a topic)."""
EVERY = 0.5
"""Seconds between a running shard's progress messages to the client."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How each shard is mirrored (the command's -j, -c, -H, login and --durability)."""

    parallel: int = 16
    connections: int | Literal["auto"] = "auto"
    """Connections a file: fixed, or "auto" (the engine adapts them, see docs/sources.md)."""
    headers: tuple[tuple[str, str], ...] = ()
    credential: Credential | None = None
    mirror: str = ""
    """The id of the mirror run its progress messages carry ("" sends none)."""
    durability: Durability = "normal"
    lean: bool = True
    """Small files over the bulk job's lean path; False under a cap of connections a
    host (``--host-connections``): a file found large there has its first request cut
    off, and a server may count that connection a moment longer than the cap allows."""


class ShardView(MirrorView):
    """The shard's progress as messages to the client's bar, one every ``EVERY``
    seconds at most: bytes of the files done and in flight, files done, failed."""

    def __init__(
        self, send: Callable[[dict[str, Any]], None], mirror: str, shard: str, run: str
    ) -> None:
        super().__init__(True, 0)
        self._send = send
        self._head = {"mirror": mirror, "shard": shard, "run": run}
        self._bytes_done = 0
        self._ended = [0, 0]  # completed, failed
        self._flying: dict[object, int] = {}
        self._over: set[object] = set()
        self._last = 0.0

    @property
    def shown(self) -> bool:
        return True  # so the mirror hands over every operation's progress

    def watch(self, op: DownloadOperation) -> None:
        pass

    def update(self, op: DownloadOperation) -> None:
        p = op.progress
        if op.guid in self._over:
            return
        if p.status in ENDED:
            self._over.add(op.guid)
            self._flying.pop(op.guid, None)
            self._bytes_done += p.bytes_received
            self._ended[p.status is not S.COMPLETED] += 1
        else:
            self._flying[op.guid] = p.bytes_received
        now = time.monotonic()
        if now - self._last >= EVERY:
            self._last = now
            self.tell()

    def ended(self, size: int, completed: bool) -> None:
        self._bytes_done += size
        self._ended[not completed] += 1
        now = time.monotonic()
        if now - self._last >= EVERY:
            self._last = now
            self.tell()

    def tell(self) -> None:
        done, failed = self._ended
        sent = self._bytes_done + sum(self._flying.values())
        self._send({**self._head, "bytes": sent, "done": done, "failed": failed})

    def finished(self, completed: int, files: int) -> None:
        self.tell()

    def close(self) -> None:
        pass


def run_shard(
    shard: Shard, dest: str, options: Options, semaphores: Sequence[Any] = ()
) -> dict[str, Any]:
    """Mirror ``shard`` into ``dest`` (a Dask task; outside a worker, with the engine's
    default state directory) and return its record, as written in the ledger.

    The shard's own names are looked up, not the destination listed: a destination
    of millions of files is listed by no shard."""
    ledger = Ledger(dest)
    os.makedirs(dest, exist_ok=True)
    names = [item.name for item in shard.items]
    found = ledger.done(shard.id)
    if (
        found is not None
        and not found.get("failed")
        and all(os.path.isfile(_at(dest, i)) for i in shard.items)
    ):
        return {**found, "downloaded": 0, "bytes": 0, "already": len(names)}
    todo = [i for i in shard.items if not already_complete(_at(dest, i), i.checksum)]
    send, run = _messenger(bool(options.mirror))
    started = time.monotonic()
    with _leases(semaphores), ledger.claim(shard.id) as staging:
        view = ShardView(send, options.mirror, shard.id, run)
        done = mirror_files(
            _downloader(options),
            todo,
            staging,
            options.parallel,
            lambda n, s: view,
            True,
            lean=options.lean,
        )
        ledger.commit(staging, [i.name for i in todo])
    record = {
        "shard": shard.id,
        "files": len(names),
        "downloaded": done.downloaded,
        "already": len(names) - len(todo) + done.skipped,
        "bytes": done.size,
        "seconds": round(time.monotonic() - started, 3),
        "failed": [
            {
                "name": os.path.basename(f.result_file),
                "url": f.requested_uri,
                "error": describe(f.error, f),
            }
            for f in done.failed
        ],
    }
    ledger.write(shard.id, record)
    return record


def _at(dest: str, item: Entry) -> str:
    return os.path.join(dest, item.name)


@contextlib.contextmanager
def _leases(semaphores: Sequence[Any]) -> Iterator[None]:
    """A lease of each host's semaphore, taken in the shard's (sorted) host order and
    held while the shard runs; a dead worker's leases expire on the scheduler."""
    taken: list[Any] = []
    try:
        for sem in semaphores:
            sem.acquire()
            taken.append(sem)
        yield
    finally:
        for sem in reversed(taken):
            sem.release()


def _messenger(wanted: bool) -> tuple[Callable[[dict[str, Any]], None], str]:
    """How this run tells the client its progress, and the run's id (a task key)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask worker
        return (lambda msg: None), f"local-{os.getpid()}"
    run = f"{worker.get_current_task()}@{worker.address}"
    if not wanted:
        return (lambda msg: None), run
    return (lambda msg: worker.log_event(TOPIC, msg)), run


_downloaders: dict[tuple[str | None, Options], BackgroundDownloader] = {}


def _downloader(options: Options) -> BackgroundDownloader:
    """This process's downloader for ``options``, its state in the worker's local
    directory (``$BGTRANSFER_STATE_DIR`` outside a worker), made once a process."""
    state = _state_dir()
    key = (state, dataclasses.replace(options, mirror=""))
    d = _downloaders.get(key)
    if d is None:
        d = BackgroundDownloader(
            state_dir=state,
            max_connections_per_file=options.connections,
            server_credential=options.credential,
            durability=options.durability,
        )
        for name, value in options.headers:
            d.set_request_header(name, value)
        d = _downloaders.setdefault(key, d)
    return d


def _state_dir() -> str | None:
    """The worker's local directory; None (the engine's default) outside a worker."""
    try:
        from distributed import get_worker

        return os.path.join(get_worker().local_directory, "bgtransfer-state")
    except (ImportError, ValueError):
        return None
