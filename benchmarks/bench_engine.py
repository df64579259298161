"""bgtransfer against curl and aria2c on loopback nginx, in the same session.

(1) 5000 files of 64 KiB, (2) 64 files of 32 MiB at once (one large file, at each
durability: bench_large_file.py).  Contenders alternate, five rounds each, every one
writing to the same file system; the table shows median throughput, wall and CPU
seconds and peak anonymous memory.  With ``--benchmark-disable`` (CI) small sizes
and one round only check the harness.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from contenders import alternate, aria2c, available, bgtransfer, report
from pytest_benchmark.fixture import BenchmarkFixture
from served import benchmarks_disabled
from servers import Nginx
from sidebyside import record

MIB = 1 << 20
_FLOOR = Path(__file__).resolve().parent / "pycurl_floor.py"


def _many_files(server: Nginx, count: int, size: int) -> tuple[list[str], str]:
    folder = server.www / f"many-{count}-{size}"
    if not folder.exists():
        folder.mkdir()
        block = os.urandom(size)
        for i in range(count):
            (folder / f"f{i:05d}.bin").write_bytes(block[i % 251 :] + block[: i % 251])
    return [server.url(f"{folder.name}/f{i:05d}.bin") for i in range(count)], folder.name


# A run's output is set aside rather than deleted while the session lasts, up to this
# much in all.  Deleting thousands of files costs the next contender: on an ext4 without
# a journal (this VM's), every inode freed in the last minute (five, while its table
# block is dirty) is skipped one by one when a new file is made (ialloc.c,
# recently_deleted).  That added 2-3 s of kernel time to whichever tool ran next
# after a 5000-file run was deleted: curl's 0.5-1 s became 2.5-3.5 s.  Deletes made
# by anything else in the minutes before a run cost the same: measure on a quiet disk.
_KEEP_BYTES = 8 << 30


def _many(
    benchmark: BenchmarkFixture,
    server: Nginx,
    tmp_path: Path,
    count: int,
    size: int,
    parallel: int,
    connections: int,
    floor: bool = False,
) -> None:
    """``floor``: also the bare pycurl loop (it holds each body in memory: small files)."""
    urls, _ = _many_files(server, count, size)
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n")
    (tmp_path / "curl.cfg").write_text(
        "".join(f'url = "{u}"\noutput = "out/f{i:05d}.bin"\n' for i, u in enumerate(urls))
    )
    out = tmp_path / "out"
    contenders = available(
        {
            f"curl -Z --parallel-max {parallel}": [
                "curl", "-s", "-Z", "--parallel-max", str(parallel), "-K", "curl.cfg",
            ],
            f"aria2c -j {parallel}": aria2c("-j", str(parallel), "-i", "list.txt", "-d", "out"),
            f"bgtransfer mirror -j {parallel} -c {connections}": [
                bgtransfer(), "mirror", "-q", "-i", "list.txt", "-d", "out",
                "-j", str(parallel), "-c", str(connections), "--state-dir", "state",
            ],
        }
    )  # fmt: skip
    if floor:
        contenders[f"pycurl loop -j {parallel} (the design's floor)"] = [
            sys.executable, str(_FLOOR), "list.txt", "out", str(parallel),
        ]  # fmt: skip
    rounds = 1 if benchmark.disabled else 5
    spent = tmp_path / "spent"
    keep = count * size * rounds * len(contenders) <= _KEEP_BYTES

    def fresh(_: str) -> None:
        if out.exists() and keep:
            out.rename(spent / str(len(os.listdir(spent))))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
        out.mkdir()

    def check(name: str) -> None:
        assert len(os.listdir(out)) == count, name

    def session() -> None:
        spent.mkdir()
        try:
            runs = alternate(contenders, rounds, fresh, check, cwd=tmp_path)
        finally:
            shutil.rmtree(spent)
        if not benchmark.disabled:
            group = f"{count} files of {size >> 10} KiB, median of {rounds}"
            report(group, runs, count * size / 1e6, "MB/s")

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]


def test_5000_small_files(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """5000 x 64 KiB, 16 at a time: bgtransfer mirror beside curl -Z and aria2c -j."""
    count = 200 if benchmarks_disabled(request.config) else 5000
    _many(benchmark, served[0], tmp_path, count, 64 << 10, 16, 4, floor=True)


def test_64_files_of_32_mib(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """64 x 32 MiB all at once."""
    size = MIB if benchmarks_disabled(request.config) else 32 * MIB
    _many(benchmark, served[0], tmp_path, 64, size, 64, 4)


_BYTECODES = Path(__file__).resolve().parent / "bytecodes.py"


def test_small_file_bytecodes(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Python bytecodes the engine thread runs for each 64 KiB file of a mirror
    (bytecodes.py): the small-file path's cost in a figure that does not move with
    the VM's noise, to read beside the wall times above."""
    count = 50 if benchmarks_disabled(request.config) else 500
    urls, _ = _many_files(served[0], count, 64 << 10)
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n")

    def session() -> None:
        done = subprocess.run(
            [sys.executable, str(_BYTECODES), "list.txt", "out"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        first = done.stdout.splitlines()[0]
        assert first.startswith("bytecodes a file: "), done.stdout
        assert len(os.listdir(tmp_path / "out")) == count
        if not benchmark.disabled:
            value = float(first.rpartition(" ")[2])
            record("64 KiB files through mirror", "bytecodes a file, engine thread", value)
            print(done.stdout)

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
