"""The slow tail: one connection trickling the end of a file does not hold the file back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from servers import FaultServer, Nginx, sha256

from engine import BackgroundDownloader
from engine._download.segmented import SegmentedDownload
from engine._download.segments import Stop, Stream
from engine._download.tail import WASTE, Tail, overtake

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


def test_a_piece_for_an_overtaken_request_leaves_it_overtaken(tmp_path: Path) -> None:
    """libcurl may hand an overtaken request more pieces before the multi drops its
    transfer: they are refused and the request stays overtaken, so the cancel of that
    transfer ends it alone (taken for a cancel of the download, it left it RUNNING
    for ever)."""
    job = SegmentedDownload("http://127.0.0.1:9/f", tmp_path / "out.bin")
    for racing in (False, True):
        loser = Stream(0, 1 << 20, 4096, checked=True)
        if racing:  # a twin got ahead of it: its rival is still set
            loser.rival = Stream(4096, 1 << 20, 8192, checked=True, twin=True)
        overtake(loser)
        assert job._writer(loser)(memoryview(bytes(16384))) == 0
        assert (loser.stop, loser.pos, loser.end) == (Stop.OVERTAKEN, 4096, 4096)


def test_a_twin_that_does_not_catch_up_gives_up_after_its_waste(tmp_path: Path) -> None:
    """A twin as slow as the request it races (a server that paces every request alike)
    would bring each byte twice: once it has brought WASTE bytes its rival had already,
    it is ended and that range is never raced again, so a race costs WASTE at most."""
    job = SegmentedDownload("http://127.0.0.1:9/f", tmp_path / "out.bin")
    slow = Stream(0, 8 << 20, 0, checked=True)
    twin = Stream(0, 8 << 20, 0, checked=True, twin=True)
    slow.rival, twin.rival = twin, slow
    piece = memoryview(bytes(64 << 10))
    write_twin = job._writer(twin)
    steps = 0
    while twin.stop is None:
        slow.pos += len(piece)  # the slow one brings each piece first (written already)
        write_twin(piece)
        steps += 1
        assert steps < 100, "the twin never gave up"
    assert twin.stop is Stop.OVERTAKEN
    assert slow.stop is None
    assert slow.raced
    assert job.tail.duplicated <= WASTE + len(piece)
    assert job.tail.pick([slow], slow.started + 10.0) is None  # not raced again


def test_a_request_waiting_for_its_slot_is_not_raced() -> None:
    """A request that waits for a connection slot (the per-host cap, while many files
    share a host) is queued, not slow: a twin would wait beside it and then fetch the
    same bytes.  Only a request on the wire that brings its bytes slowly is raced."""
    tail = Tail(usual=100e6)
    now = 1000.0
    queued = Stream(0, 2 << 20, 0, checked=False)  # in the plan, no slot yet: never started
    assert tail.pick([queued], now) is None
    slow = Stream(2 << 20, 4 << 20, (2 << 20) + 4096, checked=True, started=now - 2.0)
    assert tail.pick([queued, slow], now) == ((2 << 20) + 4096, 4 << 20)


def test_many_files_past_the_per_host_cap_cost_no_byte_twice(nginx: Nginx, tmp_path: Path) -> None:
    """32 files of 8 MiB at once, 8 connections each: four times the per-host cap of
    requests want a connection, and most wait for one.  nginx serves each byte once."""
    folder = nginx.www / "capped"
    folder.mkdir()
    bodies = {f"f{i:02d}.bin": os.urandom(8 << 20) for i in range(32)}
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
    d = BackgroundDownloader(state_dir=tmp_path / "s", max_connections_per_file=8)
    ops = [d.create_download(nginx.url(f"capped/{n}"), tmp_path / n) for n in bodies]
    for op in ops:
        op.start()
    for op in ops:
        op.wait(120)
    for name, body in bodies.items():
        assert (tmp_path / name).read_bytes() == body, name
    lines = [ln.split() for ln in (nginx.root / "timed.log").read_text().splitlines()]
    served = sum(int(sent) for _, _, sent, uri in lines if uri.startswith("/capped/"))
    assert served == sum(map(len, bodies.values())), served
