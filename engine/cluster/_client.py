"""The client's side: cut the list, hand the shards to the cluster, gather the records.

Every shard is a task (``_task.run_shard``), submitted at once; the scheduler
spreads them, steals work between workers, and runs again elsewhere the tasks of a
worker that died (up to ``distributed.scheduler.allowed-failures`` deaths a task).
The client never touches the destination: it may not even see it.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from engine import Credential, InvalidRequestError
from engine._disk.checksum import parse
from engine.cli.commands import Interrupted
from engine.cli.names import Entry, parse_list, split_login
from engine.cli.words import describe
from engine.cluster._shards import Shard, cut
from engine.cluster._task import TOPIC, Options, run_shard
from engine.cluster._view import ClusterView


@dataclasses.dataclass
class Report:
    """What a mirror on a cluster did, over all its shards."""

    files: int
    shards: int = 0
    downloaded: int = 0
    already: int = 0
    """Files complete in the destination before this run (skipped)."""
    size: int = 0
    """Bytes downloaded."""
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    """One ``{"name", "url", "error"}`` a file that did not end complete."""

    @property
    def ok(self) -> bool:
        """Every file of the list is complete in the destination."""
        return not self.failed and self.downloaded + self.already == self.files


def mirror(
    list_or_path: str | os.PathLike[str] | Iterable[str],
    dest: str | os.PathLike[str],
    client: Any = None,
    *,
    parallel: int = 16,
    connections: int | Literal["auto"] = "auto",
    headers: Sequence[tuple[str, str]] = (),
    credential: Credential | None = None,
    host_connections: int | None = None,
    shard_size: int | None = None,
    quiet: bool = True,
) -> Report:
    """Mirror a list (a file's path, or its lines: ``URL [NAME] [ALGO=HEX]``) into
    ``dest``, a folder every worker of ``client``'s cluster sees, as ``bgtransfer
    mirror`` does on one machine; ``client`` is Dask's default client when None.

    Each shard runs ``parallel`` files at a time with ``connections`` each;
    ``host_connections`` caps the connections to one host over the whole cluster.
    A user:password in the URLs becomes the credential (one login a list)."""
    if isinstance(list_or_path, (str, os.PathLike)):
        listed = parse_list(Path(list_or_path).read_text().splitlines(), os.fspath(list_or_path))
    else:
        listed = parse_list(list_or_path)
    if listed.bad:  # nothing started yet: the caller mends the list and loses nothing
        raise InvalidRequestError("; ".join(listed.bad))
    entries = listed.entries
    logins: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries):
        split = [split_login(u) for u in (entry.url, *entry.mirrors)]
        urls = [u for u, _ in split]
        logins.update(login for _, login in split if login is not None)
        if urls != [entry.url, *entry.mirrors]:
            entries[i] = dataclasses.replace(entry, url=urls[0], mirrors=tuple(urls[1:]))
        if entry.checksum:
            parse(entry.checksum)
    if len(logins) > 1:
        raise InvalidRequestError(f"the URLs carry {len(logins)} different logins: one a list")
    if logins and credential is None:
        credential = Credential(*logins.pop())
    options = Options(parallel, connections, tuple(headers), credential)
    return run(client, entries, os.path.abspath(dest), options, host_connections, shard_size, quiet)


def run(
    client: Any,
    entries: list[Entry],
    dest: str,
    options: Options,
    host_connections: int | None = None,
    shard_size: int | None = None,
    quiet: bool = True,
) -> Report:
    """Mirror ``entries`` (parsed and named already) on ``client``'s cluster."""
    try:
        from distributed import as_completed, default_client
    except ImportError as exc:
        raise ImportError(f"{exc}: pip install 'bgtransfer[cluster]'") from exc

    client = client or default_client()
    fixed = options.connections
    if options.parallel < 1 or not (fixed == "auto" or 1 <= fixed <= 64):
        raise InvalidRequestError("parallel must be at least 1, connections within 1..64")
    shards = cut(entries, shard_size)
    options, semaphores = _caps(client, shards, options, host_connections)
    run_id = uuid.uuid4().hex
    options = dataclasses.replace(options, mirror=run_id)
    report = Report(len(entries), len(shards))
    view = ClusterView(quiet, len(entries), run_id)
    client.subscribe_topic(TOPIC, view.message)
    futures: dict[Any, Shard] = {}
    try:
        futures = {
            client.submit(
                run_shard,
                shard,
                dest,
                options,
                [semaphores[h] for h in shard.hosts if h in semaphores],
                key=f"bgtransfer-shard-{shard.id}-{run_id[:12]}",
                pure=False,
                retries=2,  # an error of the destination (NFS); a dead worker is not one
            ): shard
            for shard in shards
        }
        for future in as_completed(futures):
            _add(report, view, futures[future], future)
    except KeyboardInterrupt:
        # Shards not started are dropped; running ones end their files (a worker
        # thread cannot be stopped), and the same command skips what they finished.
        client.cancel(list(futures))
        raise Interrupted from None
    finally:
        client.unsubscribe_topic(TOPIC)
        view.close()
    for sem in semaphores.values():  # not after Ctrl-C: running shards hold leases
        _close(sem)
    return report


def _add(report: Report, view: ClusterView, shard: Shard, future: Any) -> None:
    """A shard's record into the report (an error of its task fails all its files)."""
    try:
        record = future.result()
    except Exception as exc:  # the task's error, or KilledWorker after repeated deaths
        why = f"shard {shard.id} did not end: {type(exc).__name__}: {describe(exc)}"
        record = {
            "downloaded": 0,
            "already": 0,
            "bytes": 0,
            "failed": [{"name": e.name, "url": e.url, "error": why} for e in shard.items],
        }
    report.downloaded += record["downloaded"]
    report.already += record["already"]
    report.size += record["bytes"]
    report.failed.extend(record["failed"])
    view.ended(
        shard.id,
        record["bytes"],
        record["downloaded"] + record["already"],
        len(record["failed"]),
    )


_AUTO_START = 4
"""Connections a file starts with under "auto" (the engine's starting count)."""


def _caps(
    client: Any, shards: list[Shard], options: Options, cap: int | None
) -> tuple[Options, dict[str, Any]]:
    """The shards' options under a cap of ``cap`` connections a host over the cluster,
    and a semaphore a host.  A shard opens at most ``budget`` connections, its files
    at once times their connections each, and holds a lease of each of its hosts while
    it runs: a host's semaphore has ``cap // budget`` leases."""
    if cap is None:
        return options, {}
    if cap < 1:
        raise InvalidRequestError(f"the connections a host must be at least 1, not {cap}")
    from distributed import Semaphore

    files = min(options.parallel, max((len(s.items) for s in shards), default=1))
    # Under a cap over the cluster, the count a file may grow to is what the cap
    # leaves it: "auto" takes the engine's starting count, fixed, so the cap holds.
    wanted = _AUTO_START if options.connections == "auto" else options.connections
    budget = min(cap, files * wanted)
    connections = min(wanted, budget)
    parallel = max(1, budget // connections)
    leases = max(1, cap // (parallel * connections))
    hosts = sorted({h for shard in shards for h in shard.hosts})
    semaphores = {
        h: Semaphore(
            max_leases=leases,
            name=f"bgtransfer:{h}:{leases}",
            scheduler_rpc=client.scheduler,
            loop=client.loop,
        )
        for h in hosts
    }
    capped = dataclasses.replace(options, parallel=parallel, connections=connections, lean=False)
    return capped, semaphores


def _close(sem: Any) -> None:
    """Remove a host's semaphore from the scheduler (leases of zombies expire anyway)."""
    try:
        sem.close()
    except Exception:  # never registered (no shard took it), or the scheduler is gone
        return
