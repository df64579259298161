"""The slow tail: one connection trickling the end of a file does not hold the file back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from servers import FaultServer, Nginx, sha256

from engine import BackgroundDownloader

SIZE = 32 << 20


def test_a_trickling_connection_is_raced_and_the_file_ends_in_three_seconds(
    tmp_path: Path,
) -> None:
    """The last quarter of 32 MiB sent to one connection at 100 KB/s: another
    connection races that range, the file is byte-exact within 3 s, and the bytes
    received twice are counted and bounded."""
    body = os.urandom(SIZE)
    server = FaultServer(body, fault="slow-tail")
    server.slow_from = SIZE * 3 // 4
    try:
        d = BackgroundDownloader(state_dir=tmp_path / "s")
        op = d.create_download(server.url, tmp_path / "out.bin")
        started = time.monotonic()
        op.start().wait(60)
        took = time.monotonic() - started
    finally:
        server.close()
    assert (tmp_path / "out.bin").read_bytes() == body
    assert took <= 3.0, f"{took:.1f} s"
    assert server.slow_connection is not None  # the trickle did happen
    assert op.duplicated_bytes <= 1 << 20
    assert server.bytes_sent <= SIZE + (1 << 20)


def test_eight_connections_cost_no_byte_twice(nginx: Nginx, tmp_path: Path) -> None:
    """48 MiB over 8 connections: nginx serves at most 1.02 times the file (no range is
    split in flight, so no request is cut with bytes already on their way)."""
    log = nginx.root / "access.log"
    before = len(log.read_text().splitlines())
    d = BackgroundDownloader(state_dir=tmp_path / "s", max_connections_per_file=8)
    op = d.create_download(nginx.url("big.bin"), tmp_path / "out.bin")
    op.start().wait(60)
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / "big.bin")
    lines = [line for line in log.read_text().splitlines()[before:] if "/big.bin" in line]
    served = sum(int(line.split('"')[2].split()[1]) for line in lines)
    size = (nginx.www / "big.bin").stat().st_size
    assert len(lines) >= 8
    assert served <= 1.02 * size, served / size
