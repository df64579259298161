"""nginx on loopback serving one large file for a benchmark module."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Nginx

MIB = 1 << 20


def benchmarks_disabled(config: pytest.Config) -> bool:
    """CI runs with --benchmark-disable: a small file, one round, to check the harness."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def serve_big_file(root: Path, config: pytest.Config) -> Iterator[tuple[Nginx, int]]:
    """nginx serving ``big.bin`` (BGT_BENCH_SIZE bytes, default 2 GiB; 64 MiB in CI).

    Every MiB differs (a rotated random MiB), so a misplaced block cannot hide.
    """
    small = benchmarks_disabled(config)
    size = (64 * MIB) if small else int(os.environ.get("BGT_BENCH_SIZE", str(2 << 30)))
    server = Nginx(root)
    with (server.www / "big.bin").open("wb") as fh:
        chunk = random.Random(1).randbytes(MIB)
        for i in range(size // MIB):
            fh.write(chunk[i % 256 :] + chunk[: i % 256])
    try:
        yield server, size
    finally:
        server.stop()
