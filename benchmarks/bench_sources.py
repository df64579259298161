"""Several sources, adaptive connections and the bytes a download costs, against nginx.

- two sources of one file, nginx at full speed and nginx limited to 20 MB/s a
  connection (``/r20/``), beside the fast source alone: target at most 1.3 times the
  time of the fast one alone, most bytes from it;
- a server limited to 20 MB/s a connection: the default (adaptive) beside ``-c 4``:
  target at most 0.3 times the time of ``-c 4``;
- where more connections do not pay (plain nginx at full speed on loopback: the
  machine, not the server, is the limit), the default beside ``-c 4`` and ``-c 1``:
  target no more time or bytes than they take, and no more connections than pay
  (the most it had on the wire at once is recorded);
- the bytes nginx served for each (its access log), and the bytes received twice;
  over HTTP/1.1 and over HTTP/2 (TLS with a test CA), with 8 connections: target at
  most 1.02 times the size.

Each figure is the median of the rounds, which alternate the scenarios.  With
``--benchmark-disable`` (CI) one round on a small file checks the harness.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import trustme
from pytest_benchmark.fixture import BenchmarkFixture
from served import benchmarks_disabled
from servers import Nginx
from sidebyside import record

from engine import BackgroundDownloader, TransferConfig

MIB = 1 << 20
Count = int | Literal["auto"]


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Nginx, int, str]]:
    """nginx over HTTPS and HTTP/2 (a test CA) serving big.bin; the CA file."""
    root = tmp_path_factory.mktemp("bench-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key, ca_file = root / "chain.pem", root / "key.pem", root / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    server = Nginx(root, tls=(chain, key))
    size = 64 * MIB if benchmarks_disabled(request.config) else 512 * MIB
    (server.www / "big.bin").write_bytes(os.urandom(size))
    try:
        yield server, size, str(ca_file)
    finally:
        server.stop()


def _served(server: Nginx, before: int) -> dict[str, int]:
    """Body bytes nginx sent since line ``before`` of its access log, by path."""
    by_path: dict[str, int] = {}
    for line in server.requests()[before:]:
        parts = line.split('"')
        request, rest = parts[1], parts[2]
        path = request.split()[1]
        by_path[path] = by_path.get(path, 0) + int(rest.split()[1])
    return by_path


def _download(
    tmp: Path, urls: list[str], connections: Count, config: TransferConfig | None = None
) -> tuple[float, int, int]:
    """Seconds to download ``urls`` (one file, several sources), bytes received twice,
    and the most connections it had on the wire at a progress report."""
    state = tmp / f"state-{time.monotonic_ns()}"
    d = BackgroundDownloader(state_dir=state, max_connections_per_file=connections, config=config)
    out = tmp / "out.bin"
    op = d.create_download(urls[0], out, sources=urls[1:])
    most = [0]

    def told(op: object) -> None:
        most[0] = max(most[0], getattr(op, "connections", 0))

    started = time.monotonic()
    op.start(told).wait(600)
    took = time.monotonic() - started
    duplicated = op.duplicated_bytes
    out.unlink()
    return took, duplicated, most[0]


def _rounds(benchmark: BenchmarkFixture) -> int:
    return 1 if benchmark.disabled else 3


def test_two_sources_and_adaptive_connections(
    benchmark: BenchmarkFixture, served: tuple[Nginx, int], tmp_path: Path
) -> None:
    """Fast alone, fast + limited sources, limited with auto and with -c 4."""
    server, size = served
    fast, slow = server.url("big.bin"), server.url("r20/big.bin")
    scenarios: dict[str, tuple[list[str], Count]] = {
        "fast source alone (auto)": ([fast], "auto"),
        "fast source alone, -c 4": ([fast], 4),
        "fast source alone, -c 1": ([fast], 1),
        "fast + 20 MB/s-a-connection sources (auto)": ([fast, slow], "auto"),
        "20 MB/s a connection, -c 4": ([slow], 4),
        "20 MB/s a connection, auto": ([slow], "auto"),
    }
    times: dict[str, list[float]] = {name: [] for name in scenarios}
    costs: dict[str, tuple[dict[str, int], int]] = {}
    widest: dict[str, int] = {}

    def session() -> None:
        names = list(scenarios)
        for r in range(_rounds(benchmark)):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                urls, connections = scenarios[name]
                before = len(server.requests())
                took, duplicated, most = _download(tmp_path, urls, connections)
                times[name].append(took)
                costs[name] = (_served(server, before), duplicated)
                widest[name] = max(widest.get(name, 0), most)

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    if benchmark.disabled:
        return
    group = f"one {size >> 20} MiB file from two sources, adaptive connections (s)"
    for name, values in times.items():
        record(group, name, statistics.median(values), lower_is_better=True)
        served_by, duplicated = costs[name]
        for path, sent in sorted(served_by.items()):
            record(f"{group}: bytes served / size", f"{name}: {path}", sent / size)
        record(f"{group}: bytes served / size", f"{name}: received twice", duplicated / size)
        record(f"{group}: most connections at once", name, widest[name], lower_is_better=True)


def test_bytes_served_over_http1_and_http2(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tls: tuple[Nginx, int, str],
    tmp_path: Path,
) -> None:
    """Bytes nginx served for one file over 8 connections, HTTP/1.1 and HTTPS (HTTP/2)."""
    server, size = served
    tls_server, tls_size, ca_file = tls
    ratios: dict[str, float] = {}

    def session() -> None:
        before = len(server.requests())
        _download(tmp_path, [server.url("big.bin")], 8)
        ratios["http, -c 8"] = sum(_served(server, before).values()) / size
        before = len(tls_server.requests())
        _download(tmp_path, [tls_server.tls_url("big.bin")], 8, TransferConfig(ca_file=ca_file))
        ratios["https (h2 offered), -c 8"] = sum(_served(tls_server, before).values()) / tls_size

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    for name, ratio in ratios.items():
        assert ratio >= 1.0  # every byte came from nginx
        if not benchmark.disabled:
            record("bytes served / file size, 8 connections", name, ratio, lower_is_better=True)
