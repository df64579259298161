"""Adaptive connections: a file gets as many connections as raise its throughput."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import FaultServer

from engine import BackgroundDownloader, InvalidRequestError, TransferConfig
from engine._download.adaptive import SETTLE, START, TRIES, WINDOW, Width
from engine._download.segmented import SegmentedDownload

Run = Callable[[Any], Any]


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


STEP = max(SETTLE, WINDOW) * 1.05
"""Seconds between the ticks the tests give: each settles the count or ends a window."""


class Throughput:
    """Feeds a ``Width`` the bytes a download has at each tick, at the rate (MB/s) a
    function of the connection count gives: a server, link or disk."""

    def __init__(self, width: Width, rate: Callable[[int], float]) -> None:
        self.width, self.rate = width, rate
        self.now, self.done = 0.0, 0
        self.counts: list[int] = [width.tick(0.0, 0)]

    def run(self, ticks: int, rate: Callable[[int], float] | None = None) -> int:
        """``ticks`` ticks (at ``rate`` instead, when given); the count after them."""
        for _ in range(ticks):
            self.now += STEP
            self.done += int((rate or self.rate)(self.width.target) * 1e6 * STEP)
            self.counts.append(self.width.tick(self.now, self.done))
        return self.width.target


def test_width_doubles_while_it_pays_and_halves_when_the_server_is_busy() -> None:
    """Doublings are kept while the throughput grows by the gain, undone when not;
    a busy answer halves the count and growth stops."""
    width = Width(64)
    feed = Throughput(width, lambda n: 20.0 * min(n, 16) + 0.1 * n)  # 16 connections pay
    assert feed.run(30) == 16
    assert not width.growing
    assert max(feed.counts) == 32  # the doubling past them was tried, then undone
    width.busy()
    assert width.target == 8
    assert Width(1).target == 1  # never more than the cap
    assert Width(64).target == START


def test_a_server_that_limits_each_connection_gets_the_cap() -> None:
    """Each doubling pays up to the cap, which is then kept."""
    width = Width(64)
    assert Throughput(width, lambda n: 20.0 * n).run(30) == 64
    assert width.growing  # still sized for the most it may reach


def test_the_start_up_is_not_the_throughput_the_first_doubling_is_judged_against() -> None:
    """A fast server where more connections do not pay: the first bytes, slow while
    the first request runs alone, do not make the doubling look as if it paid."""
    width = Width(64)
    feed = Throughput(width, lambda n: 900.0)
    feed.run(1, lambda n: 100.0)  # the first request alone, then the others open
    assert feed.run(30) == START
    assert not width.growing
    assert max(feed.counts) == 2 * START


def test_one_slow_window_does_not_undo_a_doubling_that_pays() -> None:
    """A window that happens to be slow (the machine busy) right after a doubling is
    not the verdict: the next window, where it pays, keeps it."""
    width = Width(64)
    feed = Throughput(width, lambda n: 20.0 * min(n, 2 * START))
    feed.run(2)  # settled, then one window of START connections
    assert width.target == 2 * START
    feed.run(2, lambda n: 18.0 * START)  # settling, then a stall: less than START had
    assert width.target == 2 * START
    assert feed.run(30) == 2 * START  # the next window showed the gain; more did not
    assert not width.growing


def test_a_doubling_that_never_pays_is_undone_after_its_tries() -> None:
    """Windows that all miss the gain undo the doubling after ``TRIES`` of them, and
    no sooner."""
    width = Width(64)
    feed = Throughput(width, lambda n: 500.0)
    feed.run(2)
    assert width.target == 2 * START
    feed.run(1 + TRIES - 1)  # settling, then all windows but the last
    assert width.target == 2 * START
    assert feed.run(1) == START
    assert not width.growing


def test_a_connection_count_out_of_range_is_refused(tmp_path: Path) -> None:
    """max_connections_per_file is 'auto' or 1..64."""
    for bad in (0, 65, "many"):
        with pytest.raises(InvalidRequestError, match="auto"):
            BackgroundDownloader(state_dir=tmp_path / "s", max_connections_per_file=bad)  # type: ignore[arg-type]


def test_connections_on_the_wire_never_pass_the_count(tmp_path: Path, run: Run) -> None:
    """A connection counts from when it is scheduled, not when it first runs: a tick
    in between (the first response's head, a large file's preallocation) adds none
    past the count.  At each progress report, the connections on the wire are at most
    the highest count so far, START until the first doubling."""
    body = os.urandom(24 << 20)
    server = FaultServer(body)
    server.rate = 4_000_000
    out = tmp_path / "f.bin"
    job = SegmentedDownload(server.url, out, config=TransferConfig(connections=64, adaptive=True))
    width = job._width
    assert width is not None
    seen: list[tuple[int, int]] = []
    job.on_progress = lambda snap: seen.append((snap.connections, width.target))
    try:
        run(job.run())
    finally:
        server.close()
    assert out.read_bytes() == body
    highest = 0
    for on_wire, target in seen:
        highest = max(highest, target)
        assert on_wire <= highest, seen
    assert highest > START  # the count grew: the reports cover more than the start
