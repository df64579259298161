"""``bgtransfer mirror --cluster ADDRESS``: the mirror's command line, on Dask.

``ADDRESS`` is a running scheduler's (``tcp://HOST:PORT``, ``tls://...``), or
``local:N`` for a LocalCluster of N worker processes on this machine, started for
the command and stopped after it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from engine import InvalidRequestError
from engine._ops.validate import host_of
from engine.cli.login import credential
from engine.cli.names import Entry
from engine.cluster._client import Report, run
from engine.cluster._task import Options


def mirror_on_cluster(
    args: argparse.Namespace, entries: list[Entry], logins: list[tuple[str, str]]
) -> int:
    """Run the parsed list on the cluster of ``args.cluster``; the mirror's exit status."""
    if args.state_dir is not None:
        raise InvalidRequestError(
            "--state-dir does not go with --cluster: each worker keeps its operations "
            "in its own local directory"
        )
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            raise InvalidRequestError(f"bad header {header!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    options = Options(
        args.parallel,
        args.connections,  # an int, or "auto": each worker's engine adapts them
        tuple(headers),
        credential(args, logins, (host_of(entry.url) for entry in entries)),
        durability=args.durability,
    )
    started = time.monotonic()
    with connect(args.cluster) as client:
        ready = time.monotonic()
        report = run(
            client,
            entries,
            str(args.dir.absolute()),
            options,
            host_connections=args.host_connections,
            quiet=args.quiet,
        )
        took = time.monotonic() - ready  # the mirror's, not the cluster's stop
    _summary(report, took, ready - started)
    return 0 if report.ok else 1


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A client of the scheduler at ``address``, or of a LocalCluster (``local:N``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InvalidRequestError(
            "--cluster needs Dask: pip install 'bgtransfer[cluster]'"
        ) from None
    kind, _, count = address.partition(":")
    if kind == "local":
        if not count.isdigit() or int(count) < 1:
            raise InvalidRequestError(f"--cluster {address}: expected local:N, N at least 1")
        with (
            LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    if "://" not in address:
        raise InvalidRequestError(
            f"--cluster {address}: expected a scheduler address (tcp://HOST:PORT) or local:N"
        )
    try:
        client = Client(address, timeout="10s")
    except OSError as exc:  # the world failed (status 1), as an unreachable server
        raise ConnectionError(f"--cluster {address}: no scheduler there ({exc})") from None
    with client:
        yield client


def _summary(report: Report, took: float, start: float) -> None:
    """The mirror's summary line, then one line a failed file, as without --cluster."""
    print(
        f"{report.downloaded} downloaded, {report.already} already complete, "
        f"{len(report.failed)} failed; {report.size / 1e6:.1f} MB in {took:.1f} s "
        f"({report.size / max(took, 1e-9) / 1e6:.0f} MB/s) on the cluster, "
        f"{report.shards} shards (the cluster ready in {start:.1f} s)",
        file=sys.stderr,
    )
    for failure in report.failed:
        detail = failure["error"]
        about = "" if failure["name"] in detail else f"{failure['name']}: "
        print(f"bgtransfer: {about}{detail}", file=sys.stderr)
