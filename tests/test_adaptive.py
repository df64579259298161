"""Adaptive connections: a file gets as many connections as raise its throughput."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Nginx, sha256

from engine import BackgroundDownloader, InvalidRequestError
from engine._download.adaptive import START, WINDOW, Width


@pytest.fixture(scope="module")
def large(nginx: Nginx) -> Iterator[str]:
    path = nginx.www / "large.bin"
    path.write_bytes(os.urandom(160 << 20))
    try:
        yield "large.bin"
    finally:
        path.unlink()


def _connections_for(nginx: Nginx, path: str, before: int) -> set[str]:
    lines = [line for line in nginx.protocols()[before:] if path in line]
    return {next(f for f in line.split() if f.startswith("c")) for line in lines}


def test_auto_adds_connections_to_a_server_that_limits_each(
    nginx: Nginx, large: str, tmp_path: Path
) -> None:
    """By default a file from a server limited to 20 MB/s a connection grows past the
    connections it starts with; -c 2 (max_connections_per_file=2) keeps two."""
    before = len(nginx.protocols())
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download(nginx.url(f"r20/{large}"), tmp_path / "auto.bin")
    op.start().wait(120)
    assert sha256(tmp_path / "auto.bin") == sha256(nginx.www / large)
    assert len(_connections_for(nginx, f"/r20/{large}", before)) > START
    before = len(nginx.protocols())
    fixed = BackgroundDownloader(state_dir=tmp_path / "f", max_connections_per_file=2)
    op = fixed.create_download(nginx.url(f"r20/{large}"), tmp_path / "two.bin")
    op.start().wait(120)
    assert len(_connections_for(nginx, f"/r20/{large}", before)) <= 2


def test_width_doubles_while_it_pays_and_halves_when_the_server_is_busy() -> None:
    """Doublings are kept while the throughput grows by the gain, undone when not;
    a busy answer halves the count and growth stops."""
    width = Width(64)
    t, done = 0.0, 0
    width.tick(t, done)
    for rate in (80, 160, 320):  # MB/s: each doubling paid
        t, done = t + WINDOW, done + int(rate * 1e6 * WINDOW)
        width.tick(t, done)
    assert width.target == START * 8
    t, done = t + WINDOW, done + int(330e6 * WINDOW)  # 32 connections: barely more
    assert width.tick(t, done) == START * 4
    assert not width.growing
    width.busy()
    assert width.target == START * 2
    assert Width(3).target == 3


def test_a_connection_count_out_of_range_is_refused(tmp_path: Path) -> None:
    """max_connections_per_file is 'auto' or 1..64."""
    for bad in (0, 65, "many"):
        with pytest.raises(InvalidRequestError, match="auto"):
            BackgroundDownloader(state_dir=tmp_path / "s", max_connections_per_file=bad)  # type: ignore[arg-type]
