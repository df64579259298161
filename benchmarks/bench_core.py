"""write_at into a 1 GiB result file, beside plain os.pwrite and a Python mmap slice assignment.

Every contender writes a fresh preallocated file on the same file system, in the
same piece size, from the same source buffer; the figure is GB/s over the median
round.  Run: ``pytest benchmarks --benchmark-enable`` (CI runs it once, disabled).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from sidebyside import record

from engine._disk.core import RangeFile, remove_partial

SIZE = 1 << 30
BLOCK = 1 << 20
SOURCE = os.urandom(512 * 1024)


def _settle() -> None:
    """Write back what the last round left dirty, so no round pays for another's pages.

    Without it, the order in which contenders run swings their figures 2x on ext4."""
    os.sync()


def _fresh(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, SIZE)
    return fd


def _core(
    tmp: Path, piece: int, staged: bool, direct: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    state: dict[str, RangeFile] = {}
    result = tmp / "core.bin"
    src = memoryview(SOURCE)[:piece]

    def setup() -> None:
        if "rf" in state:
            state["rf"].close()
        remove_partial(result)
        state["rf"] = RangeFile(result, SIZE, BLOCK, staged=staged, direct=direct)
        _settle()

    def run() -> None:
        write = state["rf"].write
        for off in range(0, SIZE, piece):
            write(off, src)
        assert state["rf"].is_complete  # drains the stages: their pwrite is timed too

    return setup, run


def _pwrite(
    tmp: Path, piece: int, durable: bool = False
) -> tuple[Callable[[], None], Callable[[], None]]:
    state: dict[str, int] = {}
    src = memoryview(SOURCE)[:piece]

    def setup() -> None:
        if "fd" in state:
            os.close(state["fd"])
        state["fd"] = _fresh(tmp / "pwrite.bin")
        _settle()

    def run() -> None:
        fd, pw = state["fd"], os.pwrite
        for off in range(0, SIZE, piece):
            pw(fd, src, off)
        if durable:
            os.fsync(fd)

    return setup, run


def _mmap_slice(tmp: Path, piece: int) -> tuple[Callable[[], None], Callable[[], None]]:
    state: dict[str, mmap.mmap] = {}
    src = memoryview(SOURCE)[:piece]

    def setup() -> None:
        if "map" in state:
            state["map"].close()
        fd = _fresh(tmp / "mmap.bin")
        state["map"] = mmap.mmap(fd, SIZE)
        os.close(fd)
        _settle()

    def run() -> None:
        m = state["map"]
        for off in range(0, SIZE, piece):
            m[off : off + piece] = src

    return setup, run


CONTENDERS = {
    "core write_at (direct, on the disk)": lambda tmp, piece: _core(tmp, piece, True, True),
    "core write_at (staged, page cache)": lambda tmp, piece: _core(tmp, piece, True, False),
    "core write_at (unstaged)": lambda tmp, piece: _core(tmp, piece, False, False),
    "os.pwrite loop": _pwrite,
    "os.pwrite loop + fsync": lambda tmp, piece: _pwrite(tmp, piece, durable=True),
    "python mmap slice assignment": _mmap_slice,
}
"""Direct writes end on the disk, the others in the page cache: "+ fsync" is the same
promise made by a plain loop."""


@pytest.mark.parametrize("piece", [16 * 1024, 512 * 1024], ids=["16KiB", "512KiB"])
@pytest.mark.parametrize("name", list(CONTENDERS))
def test_write_1gib(benchmark: BenchmarkFixture, tmp_path: Path, name: str, piece: int) -> None:
    """Throughput of writing 1 GiB in pieces: the core must not trail the mmap slice."""
    benchmark.group = f"write 1 GiB in {piece // 1024} KiB pieces"
    setup, run = CONTENDERS[name](tmp_path, piece)
    try:
        benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)  # type: ignore[no-untyped-call]
    finally:
        setup()  # closes the last round's file before it goes
        for path in tmp_path.iterdir():
            path.unlink()
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = round(SIZE / median / 1e9, 2)
        record(benchmark.group + " (GB/s, median of 5)", name, SIZE / median / 1e9)
