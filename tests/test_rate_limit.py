"""Rate limits: an operation's, a downloader's total, and --limit-rate on the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pycurl
import pytest
from servers import Nginx, sha256

from engine import BackgroundDownloader, DownloadOperation, InvalidRequestError
from engine._net.ratelimit import Budget

LIMIT = 10_000_000
"""Bytes a second: far below what loopback nginx gives, so only the limit sets the pace."""


@pytest.fixture(scope="module")
def fifty(nginx: Nginx) -> Iterator[str]:
    """A 50 MB file on nginx (its name)."""
    path = nginx.www / "fifty.bin"
    path.write_bytes(os.urandom(50_000_000))
    try:
        yield "fifty.bin"
    finally:
        path.unlink()


def _timed(ops: list[DownloadOperation]) -> float:
    """Start the operations, wait for all; seconds from the start to the last byte."""
    started = time.monotonic()
    for op in ops:
        op.start()
    for op in ops:
        op.wait(120)
    return time.monotonic() - started


def test_an_operation_limit_holds_within_ten_percent(
    nginx: Nginx, fifty: str, tmp_path: Path
) -> None:
    """50 MB under max_bytes_per_second=10 MB/s arrives at 9-11 MB/s, byte-exact."""
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download(nginx.url(fifty), tmp_path / "out.bin")
    op.max_bytes_per_second = LIMIT
    took = _timed([op])
    rate = 50_000_000 / took
    assert 0.9 * LIMIT <= rate <= 1.1 * LIMIT, f"{rate / 1e6:.2f} MB/s"
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / fifty)


def test_a_downloader_total_is_shared_by_its_operations(
    nginx: Nginx, fifty: str, tmp_path: Path
) -> None:
    """Two 50 MB files under a 20 MB/s total arrive together at 18-22 MB/s."""
    d = BackgroundDownloader(state_dir=tmp_path / "s", max_bytes_per_second=2 * LIMIT)
    ops = [d.create_download(nginx.url(fifty), tmp_path / f"out{i}.bin") for i in range(2)]
    rate = 100_000_000 / _timed(ops)
    assert 1.8 * LIMIT <= rate <= 2.2 * LIMIT, f"{rate / 1e6:.2f} MB/s"


def test_shares_fill_what_a_capped_operation_leaves() -> None:
    """A downloader's total goes first to operations capped below their share, the
    rest evenly to the others' connections (each handle's rate changed once a second
    at most); a lifted limit frees every handle at once."""

    async def divide() -> list[int]:
        total = Budget(12_000_000)
        capped, free = Budget(2_000_000, total), Budget(0, total)
        handles = [pycurl.Curl() for _ in range(4)]
        capped.attach(handles[0])
        for curl in handles[1:]:
            free.attach(curl)
        for curl in handles:  # past their first second (see Budget.attach)
            capped._settled(curl)
            free._settled(curl)
        await asyncio.sleep(1.05)  # a handle takes one new rate a second at most
        shares = [curl.bgt_rate for curl in handles]
        total.rate = 0
        capped.rate = 0
        return shares + [curl.bgt_rate for curl in handles]

    shares = asyncio.run(divide())
    assert shares[:4] == [2_000_000, 3_333_333, 3_333_333, 3_333_333]
    assert shares[4:] == [0, 0, 0, 0]


def test_a_negative_limit_is_refused(tmp_path: Path) -> None:
    """max_bytes_per_second below 0 is a clear InvalidRequestError, on both objects."""
    with pytest.raises(InvalidRequestError, match="max_bytes_per_second"):
        BackgroundDownloader(state_dir=tmp_path / "s", max_bytes_per_second=-1)
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download("http://127.0.0.1:9/x", tmp_path / "x")
    with pytest.raises(InvalidRequestError, match="max_bytes_per_second"):
        op.max_bytes_per_second = -5


def _bgt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "--state-dir", str(cwd / "s")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_get_limit_rate_takes_curls_syntax(nginx: Nginx, tmp_path: Path) -> None:
    """get --limit-rate 16M paces 48 MiB at 16 MiB/s (curl's 1024-based suffixes)."""
    size = (nginx.www / "big.bin").stat().st_size
    started = time.monotonic()
    done = _bgt("get", nginx.url("big.bin"), "-o", "out.bin", "--limit-rate", "16M", cwd=tmp_path)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    rate = size / took  # the interpreter's start-up only makes it look slower
    assert 0.7 * (16 << 20) <= rate <= 1.1 * (16 << 20), f"{rate / 1e6:.2f} MB/s"


@pytest.mark.parametrize("rate", ["10Q", "fast", "1.2.3M", ""])
def test_a_bad_rate_is_bad_usage(tmp_path: Path, rate: str) -> None:
    """--limit-rate that is not a rate: status 2 and a line that says what one is."""
    done = _bgt("get", "http://127.0.0.1:9/x", "--limit-rate", rate, cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a rate" in done.stderr
