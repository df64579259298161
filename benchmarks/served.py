"""nginx on loopback serving one large file for a benchmark module, and the bytes it served."""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Nginx
from sidebyside import record

MIB = 1 << 20


def benchmarks_disabled(config: pytest.Config) -> bool:
    """CI runs with --benchmark-disable: a small file, one round, to check the harness."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def serve_big_file(root: Path, config: pytest.Config) -> Iterator[tuple[Nginx, int]]:
    """nginx serving ``big.bin`` (BGT_BENCH_SIZE bytes, default 2 GiB; 64 MiB in CI).

    Every MiB differs (a rotated random MiB), so a misplaced block cannot hide.
    """
    small = benchmarks_disabled(config)
    size = (64 * MIB) if small else _size(os.environ.get("BGT_BENCH_SIZE") or "2G")
    server = Nginx(root)
    with (server.www / "big.bin").open("wb") as fh:
        chunk = random.Random(1).randbytes(MIB)
        for i in range(size // MIB):
            fh.write(chunk[i % 256 :] + chunk[: i % 256])
    try:
        yield server, size
    finally:
        server.stop()


def _size(text: str) -> int:
    """Bytes from ``BGT_BENCH_SIZE``: a number, or one with K, M or G (1024-based)."""
    unit = {"K": 1 << 10, "M": MIB, "G": 1 << 30}.get(text[-1:].upper(), 0)
    return int(text[:-1]) * unit if unit else int(text)


_SENT = re.compile(rb'" \d{3} (\d+) ')


class ServedBytes:
    """Body bytes and requests nginx served since ``mark()``, from its access log."""

    def __init__(self, server: Nginx) -> None:
        self.log = server.root / "access.log"
        self.at = 0
        self.runs: dict[str, list[int]] = {}
        self.requests: dict[str, list[int]] = {}

    def mark(self) -> None:
        self.at = self.log.stat().st_size if self.log.exists() else 0

    def logged(self) -> bool:
        """Whether a request was logged since ``mark()`` (nginx logs one once served)."""
        return self.log.exists() and self.log.stat().st_size > self.at

    def take(self, name: str) -> None:
        with self.log.open("rb") as fh:
            fh.seek(self.at)
            found = [int(m[1]) for m in _SENT.finditer(fh.read())]
        self.runs.setdefault(name, []).append(sum(found))
        self.requests.setdefault(name, []).append(len(found))

    def report(self, group: str) -> None:
        for name, sent in self.runs.items():
            record(f"{group}: MB served a run", name, statistics.median(sent) / 1e6)
            record(
                f"{group}: requests a run",
                name,
                statistics.median(self.requests[name]),
                lower_is_better=True,
            )
