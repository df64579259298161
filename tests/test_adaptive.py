"""Adaptive connections: a file gets as many connections as raise its throughput."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servers import FaultServer

from engine import BackgroundDownloader, InvalidRequestError
from engine._download.adaptive import START, WINDOW, Width


def test_auto_adds_connections_to_a_server_that_limits_each(tmp_path: Path) -> None:
    """By default a file from a server that paces each connection (4 MB/s) grows past
    the connections it starts with; max_connections_per_file=2 keeps two."""
    body = os.urandom(24 << 20)
    server = FaultServer(body)
    server.rate = 4_000_000
    try:
        d = BackgroundDownloader(state_dir=tmp_path / "s")
        op = d.create_download(server.url, tmp_path / "auto.bin")
        op.start().wait(120)
        assert (tmp_path / "auto.bin").read_bytes() == body
        assert len(server.peers) > START
        server.peers.clear()
        fixed = BackgroundDownloader(state_dir=tmp_path / "f", max_connections_per_file=2)
        op = fixed.create_download(server.url, tmp_path / "two.bin")
        op.start().wait(120)
        assert len(server.peers) <= 2
    finally:
        server.close()


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
