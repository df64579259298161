"""bgtransfer mirror on a LocalCluster of two worker processes, against the mirror in
one process, from loopback nginx.

(1) 2000 files of 64 KiB, (2) 8 files of 300 MB.  Three contenders alternate: the
in-process mirror; ``--cluster tcp://...`` to a LocalCluster of 2 started once for
the session (its start measured apart); ``--cluster local:2``, which starts and stops
its own cluster on every run.  The table shows the median wall time, and the bytes
nginx served a run (from its access log: a byte fetched twice is a cost).  The CPU
and memory of the workers are not the command's and are not counted.  With
``--benchmark-disable`` (CI) small sizes and one round only check the harness.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from contenders import alternate, bgtransfer
from pytest_benchmark.fixture import BenchmarkFixture
from served import benchmarks_disabled
from servers import Nginx
from sidebyside import record

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[str]:
    """A LocalCluster of 2 worker processes (one thread each), as ``local:2`` makes;
    its start is recorded apart from the mirrors."""
    started = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    record(
        "start of a LocalCluster of 2: s",
        "LocalCluster(n_workers=2)",
        time.perf_counter() - started,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _files(server: Nginx, count: int, size: int) -> list[str]:
    folder = server.www / f"cluster-{count}-{size}"
    if not folder.exists():
        folder.mkdir()
        block = os.urandom(min(size, 1 << 20))
        for i in range(count):
            with (folder / f"f{i:05d}.bin").open("wb") as fh:
                rotated = block[i % 251 :] + block[: i % 251]
                for _ in range(size // len(block)):
                    fh.write(rotated)
                fh.write(rotated[: size % len(block)])
    return [server.url(f"{folder.name}/f{i:05d}.bin") for i in range(count)]


def _served(server: Nginx, skip: int) -> tuple[int, int]:
    """Bytes nginx sent for the requests logged after the first ``skip``, and the count."""
    lines = server.requests()
    return sum(int(line.split('" ', 2)[1].split()[1]) for line in lines[skip:]), len(lines)


def _compare(
    benchmark: BenchmarkFixture, server: Nginx, address: str, tmp_path: Path, count: int, size: int
) -> None:
    urls = _files(server, count, size)
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n")
    mirror = [bgtransfer(), "mirror", "-q", "-i", "list.txt", "-d", str(tmp_path / "out")]
    mirror += ["-j", "16", "-c", "4"]
    contenders = {
        "bgtransfer mirror -j 16 -c 4 (one process)": [*mirror, "--state-dir", "state"],
        "--cluster tcp:// (LocalCluster of 2, started)": [*mirror, "--cluster", address],
        "--cluster local:2 (its start included)": [*mirror, "--cluster", "local:2"],
    }
    rounds = 1 if benchmark.disabled else 3
    out = tmp_path / "out"
    served: dict[str, list[int]] = {name: [] for name in contenders}
    logged = [len(server.requests())]

    def fresh(_: str) -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
        logged[0] = len(server.requests())

    def check(name: str) -> None:
        assert sorted(os.listdir(out)) == [".bgtransfer"] * ("cluster" in name) + [
            f"f{i:05d}.bin" for i in range(count)
        ], name
        assert all((out / f"f{i:05d}.bin").stat().st_size == size for i in range(count))
        sent, logged[0] = _served(server, logged[0])
        served[name].append(sent)

    def session() -> None:
        runs = alternate(contenders, rounds, fresh, check, cwd=tmp_path)
        if benchmark.disabled:
            return
        group = f"{count} files of {size / 1e6:g} MB, median of {rounds}"
        for name, rs in runs.items():
            wall = statistics.median(r.wall for r in rs)
            record(f"{group}: wall s", name, wall, lower_is_better=True)
            record(f"{group}: MB/s", name, count * size / 1e6 / wall)
            record(f"{group}: MB served", name, statistics.median(served[name]) / 1e6)

    benchmark.pedantic(session, rounds=1, iterations=1)


def test_2000_small_files_on_a_cluster_of_2(
    benchmark: BenchmarkFixture,
    plain_nginx: Nginx,
    local_cluster: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """2000 x 64 KiB: the in-process mirror beside a LocalCluster of 2."""
    count = 100 if benchmarks_disabled(request.config) else 2000
    _compare(benchmark, plain_nginx, local_cluster, tmp_path, count, 64 << 10)


def test_8_files_of_300_mb_on_a_cluster_of_2(
    benchmark: BenchmarkFixture,
    plain_nginx: Nginx,
    local_cluster: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """8 x 300 MB: the in-process mirror beside a LocalCluster of 2."""
    size = (8 << 20) if benchmarks_disabled(request.config) else 300_000_000
    _compare(benchmark, plain_nginx, local_cluster, tmp_path, 8, size)
