"""bgtransfer against curl and aria2c on loopback nginx, in the same session.

(1) 5000 files of 64 KiB, 16 at a time, into a folder on tmpfs and into one on the
disk (places.py), with the bare pycurl loop as the design's floor, then the same
files at ``--durability full`` beside ``curl -Z`` followed by a sync of each file
(on the disk only: tmpfs has nothing to sync); (2) 64 files of 32 MiB at once (one
large file, at each durability: bench_large_file.py).  Contenders alternate, five
rounds each, every one writing to the same folder; the table shows median
throughput, wall, the wall divided by ``curl -Z``'s of the same rounds, CPU seconds
and CPU a file (the rusage of the child from ``os.wait4``: user + system of every
thread, over the files), peak anonymous memory, the bytes and requests nginx served a
run (its access log), the bytecodes the engine thread runs a file (bytecodes.py) and
the load average before and after.  With ``--benchmark-disable`` (CI) small sizes and
one round only check the harness.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from contenders import (
    Run,
    alternate,
    aria2c,
    available,
    bgtransfer,
    load_average,
    measure,
    report,
)
from places import PLACES, destination, fs_type
from pytest_benchmark.fixture import BenchmarkFixture
from served import ServedBytes, benchmarks_disabled
from servers import Nginx
from sidebyside import record

MIB = 1 << 20
_FLOOR = Path(__file__).resolve().parent / "pycurl_floor.py"
_BYTECODES = Path(__file__).resolve().parent / "bytecodes.py"


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
# On tmpfs nothing is set aside: a deleted file costs nothing there, and a kept one
# costs memory.
_KEEP_BYTES = 8 << 30
_CURL_Z = "curl -Z --parallel-max {}"


class _Scenario:
    """One list of files, its contenders' command lines and the folder they write to."""

    def __init__(self, server: Nginx, tmp_path: Path, dest: Path, count: int, size: int) -> None:
        self.urls, _ = _many_files(server, count, size)
        self.count, self.size = count, size
        self.cwd, self.dest = tmp_path, dest
        self.out = dest / "out"
        self.tmpfs = fs_type(dest) == "tmpfs"
        self.meter = ServedBytes(server)
        (tmp_path / "list.txt").write_text("\n".join(self.urls) + "\n")
        (tmp_path / "curl.cfg").write_text(
            "".join(f'url = "{u}"\noutput = "{self.out}/f{i:05d}.bin"\n'
                    for i, u in enumerate(self.urls))
        )  # fmt: skip

    def curl(self, parallel: int) -> list[str]:
        return ["curl", "-s", "-Z", "--parallel-max", str(parallel), "-K", "curl.cfg"]

    def mirror(self, parallel: int, connections: int, *more: str) -> list[str]:
        return [
            bgtransfer(), "mirror", "-q", "-i", "list.txt", "-d", str(self.out),
            "-j", str(parallel), "-c", str(connections), "--state-dir", "state", *more,
        ]  # fmt: skip

    def session(self, contenders: dict[str, list[str]], rounds: int) -> dict[str, list[Run]]:
        """Every contender ``rounds`` times, alternating, each into an empty folder."""
        spent = self.dest / "spent"
        total = self.count * self.size * rounds * len(contenders)
        keep = not self.tmpfs and total <= _KEEP_BYTES

        def fresh(_: str) -> None:
            if self.out.exists() and keep:
                self.out.rename(spent / str(len(os.listdir(spent))))
            shutil.rmtree(self.out, ignore_errors=True)
            shutil.rmtree(self.cwd / "state", ignore_errors=True)
            self.out.mkdir()
            self.meter.mark()

        def check(name: str) -> None:
            self.meter.take(name)
            with os.scandir(self.out) as found:
                sizes = [entry.stat().st_size for entry in found]
            assert len(sizes) == self.count, name
            assert set(sizes) == {self.size}, name

        spent.mkdir()
        try:
            return alternate(contenders, rounds, fresh, check, cwd=self.cwd)
        finally:
            shutil.rmtree(spent)
            shutil.rmtree(self.out, ignore_errors=True)

    def start_up(self, argv: list[str], rounds: int) -> Run:
        """Median CPU seconds (all, and user) of ``argv`` on a list of one file: the
        interpreter's start, the imports and the state's opening, which a short list
        pays in full."""
        (self.cwd / "one.txt").write_text(self.urls[0] + "\n")
        (self.cwd / "one.cfg").write_text(f'url = "{self.urls[0]}"\noutput = "{self.out}/f0.bin"\n')
        one = {"list.txt": "one.txt", "curl.cfg": "one.cfg"}
        argv = [one.get(a, a) for a in argv]
        runs = []
        for _ in range(rounds):
            shutil.rmtree(self.out, ignore_errors=True)
            shutil.rmtree(self.cwd / "state", ignore_errors=True)
            self.out.mkdir()
            runs.append(measure(argv, self.cwd))
        shutil.rmtree(self.out, ignore_errors=True)
        cpu, user = (statistics.median(getattr(r, k) for r in runs) for k in ("cpu", "user"))
        return Run(0.0, cpu, 0, user=user)

    def bytecodes(self, count: int) -> float:
        """Bytecodes the engine thread runs a file (bytecodes.py on the first ``count``)."""
        (self.cwd / "traced.txt").write_text("\n".join(self.urls[:count]) + "\n")
        done = subprocess.run(
            [sys.executable, str(_BYTECODES), "traced.txt", str(self.dest / "traced")],
            cwd=self.cwd, capture_output=True, text=True, check=True,
        )  # fmt: skip
        first = done.stdout.splitlines()[0]
        assert first.startswith("bytecodes a file: "), done.stdout
        assert len(os.listdir(self.dest / "traced")) == count
        return float(first.rpartition(" ")[2])


def _small_files(
    benchmark: BenchmarkFixture, server: Nginx, tmp_path: Path, dest: Path, count: int
) -> None:
    """5000 x 64 KiB at -j 16: the default durability beside curl -Z, aria2c and the
    pycurl floor, then --durability full beside curl -Z and a sync of each file."""
    it = _Scenario(server, tmp_path, dest, count, 64 << 10)
    parallel, connections = 16, 4
    curl = _CURL_Z.format(parallel)
    ours = f"bgtransfer mirror -j {parallel} -c {connections}"
    aria = aria2c("-j", str(parallel), "-i", "list.txt", "-d", str(it.out))
    contenders = available(
        {
            curl: it.curl(parallel),
            f"aria2c -j {parallel}": aria,
            ours: it.mirror(parallel, connections),
        }
    )
    floor = f"pycurl loop -j {parallel} (the design's floor)"
    contenders[floor] = [
        sys.executable, str(_FLOOR), "list.txt", str(it.out), str(parallel),
    ]  # fmt: skip
    synced = f"{curl}, then sync of each file"
    full = {
        synced: ["sh", "-c", f'{" ".join(it.curl(parallel))} && sync -- "$0"/*', str(it.out)],
        f"{ours} --durability full": it.mirror(parallel, connections, "--durability", "full"),
    }
    rounds = 1 if benchmark.disabled else 5
    kind = fs_type(dest)

    def session() -> None:
        group = f"{count} files of 64 KiB on {kind}, median of {rounds}"
        load = {"before": os.getloadavg()[0]}
        runs = it.session(contenders, rounds)
        start = {name: it.start_up(contenders[name], rounds) for name in (ours, floor, curl)}
        traced = it.bytecodes(50 if benchmark.disabled else 500)
        load["after the default durability"] = os.getloadavg()[0]
        slow = {}
        if not it.tmpfs:
            slow = it.session(full, rounds)
            load["after --durability full"] = os.getloadavg()[0]
        if benchmark.disabled:
            return
        load_average(group, load)
        report(group, runs, count * it.size / 1e6, "MB/s", files=count, base=curl)
        it.meter.report(group)
        for name, one in start.items():
            record(f"{group}: CPU s of a 1-file list (start-up)", name, one.cpu,
                   lower_is_better=True)  # fmt: skip
            for part, what in (("cpu", "CPU (user + system)"), ("user", "user CPU")):
                beyond = statistics.median(getattr(r, part) for r in runs[name])
                beyond = (beyond - getattr(one, part)) / count * 1e6
                record(f"{group}: {what} us a file beyond start-up", name, beyond,
                       lower_is_better=True)  # fmt: skip
        record(f"{group}: bytecodes a file, engine thread", ours, traced, lower_is_better=True)
        if slow:
            report(f"{group}, --durability full", slow, count * it.size / 1e6, "MB/s",
                   files=count, base=synced)  # fmt: skip

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]


@pytest.mark.timeout(1800)  # 30 runs or more on a shared machine: past the tests' limit
@pytest.mark.parametrize("place", PLACES)
def test_5000_small_files(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    place: str,
) -> None:
    """5000 x 64 KiB, 16 at a time, into tmpfs and into the disk: bgtransfer mirror
    beside curl -Z, aria2c -j and the pycurl floor, and at --durability full."""
    count = 200 if benchmarks_disabled(request.config) else 5000
    with destination(place, tmp_path) as dest:
        _small_files(benchmark, served[0], tmp_path, dest, count)


@pytest.mark.timeout(1800)
def test_64_files_of_32_mib(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """64 x 32 MiB all at once, into the disk: bgtransfer mirror beside curl -Z."""
    size = MIB if benchmarks_disabled(request.config) else 32 * MIB
    with destination("disk", tmp_path) as dest:
        it = _Scenario(served[0], tmp_path, dest, 64, size)
        curl = _CURL_Z.format(64)
        contenders = available(
            {
                curl: it.curl(64),
                "aria2c -j 64": aria2c("-j", "64", "-i", "list.txt", "-d", str(it.out)),
                "bgtransfer mirror -j 64 -c 4": it.mirror(64, 4),
            }
        )
        rounds = 1 if benchmark.disabled else 5

        def session() -> None:
            group = f"64 files of {size >> 20} MiB at once on {fs_type(dest)}, median of {rounds}"
            load = {"before": os.getloadavg()[0]}
            runs = it.session(contenders, rounds)
            load["after"] = os.getloadavg()[0]
            if not benchmark.disabled:
                load_average(group, load)
                report(group, runs, 64 * size / 1e6, "MB/s", files=64, base=curl)
                it.meter.report(group)

        benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
