"""One large file from nginx on loopback: bgtransfer against curl and aria2c, same session.

Contenders alternate, five rounds each, every one writing to the same file system;
the table shows median wall seconds and CPU seconds (user + system of the child).
With ``--benchmark-disable`` (CI) a small file and one round only check the harness.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from served import serve_big_file
from servers import Nginx
from sidebyside import record


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Nginx, int]]:
    yield from serve_big_file(tmp_path_factory.mktemp("bench-nginx"), request.config)


def _timed(argv: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def test_one_large_file(
    benchmark: BenchmarkFixture, served: tuple[Nginx, int], tmp_path: Path
) -> None:
    """Wall and CPU time of one large file: bgtransfer -c 8 beside curl and aria2c -x16."""
    server, size = served
    url = server.url("big.bin")
    out = tmp_path / "out.bin"
    bgt = shutil.which("bgtransfer", path=str(Path(sys.executable).parent)) or "bgtransfer"
    contenders = {
        "curl -o /dev/null (socket ceiling)": ["curl", "-s", "-o", "/dev/null", url],
        "curl -o FILE": ["curl", "-s", "-o", str(out), url],
        "aria2c -x16 -s16": [
            "aria2c",
            "-q",
            "-x16",
            "-s16",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=falloc",
            "-d",
            str(tmp_path),
            "-o",
            "out.bin",
            url,
        ],
        "bgtransfer get -c 8": [bgt, "get", "-q", "-c", "8", "-o", str(out), url],
    }
    contenders = {k: v for k, v in contenders.items() if shutil.which(v[0])}
    rounds = 1 if benchmark.disabled else 5
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}

    def alternate() -> None:
        for _ in range(rounds):
            for name, argv in contenders.items():
                out.unlink(missing_ok=True)
                wall, cpu = _timed(argv)
                if "/dev/null" not in argv:
                    assert out.stat().st_size == size, name
                walls[name].append(wall)
                cpus[name].append(cpu)

    benchmark.pedantic(alternate, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    if benchmark.disabled:
        return
    group = f"one {size >> 20} MiB file from nginx, median of {rounds}"
    for name in contenders:
        wall = statistics.median(walls[name])
        record(f"{group}: MB/s", name, size / wall / 1e6)
        record(f"{group}: CPU seconds", name, statistics.median(cpus[name]))
