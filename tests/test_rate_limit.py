"""Rate limits: an operation's, a downloader's total, and --limit-rate on the command line."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pycurl
import pytest
from servers import Nginx, sha256

from engine import BackgroundDownloader, DownloadOperation, InvalidRequestError
from engine._net.ratelimit import BURST, TICK, Budget
from engine._net.transport import new_multi
from engine.errors import TransferError

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


SLOW = 5_000_000
"""Bytes a second for the window tests: 50 MB takes 10 s, room for 5 s windows."""


def _samples(ops: list[DownloadOperation], attach: bool = False) -> list[tuple[float, int]]:
    """Run the operations to their end; (time, bytes of all together) at each progress
    report.  The reports come at the engine's ticks, on this loop."""
    seen: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def told(_: object) -> None:
        seen.append((time.monotonic(), sum(o.last_progress.bytes_received for o in ops)))

    async def go() -> None:
        runs = [o.attach_async(told) if attach else o.start_async(told) for o in ops]
        await asyncio.wait_for(asyncio.gather(*runs), 120)

    asyncio.run(go())
    return seen


def _windows(seen: list[tuple[float, int]], total: int, limit: int) -> list[float]:
    """The rate of every 5 s window (to the first report 5 s or more after its start)
    that starts a second or more after the first byte and ends before the last one,
    over ``limit``."""
    start = next(t for t, b in seen if b > seen[0][1])
    rates = []
    for i, (t0, b0) in enumerate(seen):
        if t0 < start + 1.0:
            continue
        later = next(((t, b) for t, b in seen[i + 1 :] if t >= t0 + 5.0), None)
        if later is None or later[1] >= total:
            break
        rates.append((later[1] - b0) / (later[0] - t0) / limit)
    return rates


def _assert_every_window_within_ten_percent(rates: list[float]) -> None:
    """The upper bound is the limiter's promise.  The lower one is sound here: the
    server is nginx on loopback, hundreds of MB/s a connection, and the engine needs a
    few percent of one core at these rates, so only the limit sets the pace even on a
    loaded machine; a window is measured between two reports, over their own times,
    so a late report shifts its window, it does not stretch it."""
    assert rates, "no 5 s window: the download ended too soon"
    worst = max(rates, key=lambda r: abs(r - 1))
    assert all(0.9 <= r <= 1.1 for r in rates), f"a 5 s window at {worst:.3f} of the limit"


def test_an_operation_limit_holds_over_every_five_seconds(
    nginx: Nginx, fifty: str, tmp_path: Path
) -> None:
    """Under max_bytes_per_second, every 5 s window after the first second is within
    10% of the limit, not only the average of the whole download."""
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download(nginx.url(fifty), tmp_path / "out.bin")
    op.max_bytes_per_second = SLOW
    _assert_every_window_within_ten_percent(_windows(_samples([op]), 50_000_000, SLOW))
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / fifty)


def test_a_downloader_total_holds_over_every_five_seconds(
    nginx: Nginx, fifty: str, tmp_path: Path
) -> None:
    """Two downloads under one downloader's total: every 5 s window of both together
    after the first second is within 10% of the total."""
    d = BackgroundDownloader(state_dir=tmp_path / "s", max_bytes_per_second=2 * SLOW)
    ops = [d.create_download(nginx.url(fifty), tmp_path / f"o{i}.bin") for i in range(2)]
    rates = _windows(_samples(ops), 100_000_000, 2 * SLOW)
    _assert_every_window_within_ten_percent(rates)


_KILLED = """
import sys, time
from engine import BackgroundDownloader
d = BackgroundDownloader(state_dir=sys.argv[1])
op = d.create_download(sys.argv[2], sys.argv[3])
op.max_bytes_per_second = int(sys.argv[4])
op.start()
while op.progress.bytes_received < 5_000_000:
    time.sleep(0.05)
print(op.guid, flush=True)
time.sleep(60)
"""


def test_a_limit_outlives_the_process_that_set_it(nginx: Nginx, fifty: str, tmp_path: Path) -> None:
    """A limit set in a process killed mid-download reads back in the next process
    (get_current_downloads), and the resumed download keeps under it (at most 10%
    over, across what was left), byte-exact."""
    out_and_rate = [str(tmp_path / "out.bin"), str(SLOW)]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(tmp_path / "s"), nginx.url(fifty), *out_and_rate],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # the installed package, not the source tree
    )
    try:
        assert child.stdout is not None
        guid = child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    (op,) = [o for o in d.get_current_downloads() if str(o.guid) == guid]
    assert op.max_bytes_per_second == SLOW
    seen = _samples([op], True)
    had = next(b for _, b in seen if b > 0)  # what the killed process left
    assert had < 50_000_000
    moving = [(t, b) for t, b in seen if b > had]  # from the first bytes of the resume
    (t0, b0), (t1, b1) = moving[0], moving[-1]
    rate = (b1 - b0) / (t1 - t0)
    assert rate <= 1.1 * SLOW, f"{rate / 1e6:.2f} MB/s"  # a bound, not a speed to reach
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / fifty)


def _stored_rate(state_dir: Path, guid: str) -> int:
    db = sqlite3.connect(state_dir / "operations.sqlite3")
    try:
        (rate,) = db.execute("SELECT max_rate FROM operations WHERE guid = ?", (guid,)).fetchone()
        return int(rate)
    finally:
        db.close()


def test_resume_limit_rate_replaces_the_stored_limit(nginx: Nginx, tmp_path: Path) -> None:
    """resume --limit-rate stores a new limit; a resume without it keeps the stored one."""
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download(nginx.url("nope.bin"), tmp_path / "x.bin")
    op.max_bytes_per_second = SLOW
    guid = str(op.guid)
    assert _stored_rate(tmp_path / "s", guid) == SLOW
    op.start()
    with pytest.raises(TransferError):
        op.wait(60)
    done = _bgt("resume", guid, "--limit-rate", "1M", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # still a 404: the limit is stored all the same
    assert _stored_rate(tmp_path / "s", guid) == 1 << 20
    done = _bgt("resume", guid, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert _stored_rate(tmp_path / "s", guid) == 1 << 20


def test_a_database_from_before_stored_limits_is_read(tmp_path: Path) -> None:
    """A state database without the max_rate column gets it (no limit) when opened."""
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    op = d.create_download("http://127.0.0.1:9/x", tmp_path / "x")
    guid = str(op.guid)
    del op, d
    db = sqlite3.connect(tmp_path / "s" / "operations.sqlite3")
    db.execute("ALTER TABLE operations DROP COLUMN max_rate")
    db.commit()
    db.close()
    done = subprocess.run(
        [sys.executable, "-c", _READ_BACK, str(tmp_path / "s"), guid],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(SLOW)]


_READ_BACK = """
import sys
from engine import BackgroundDownloader
d = BackgroundDownloader(state_dir=sys.argv[1])
(op,) = [o for o in d.get_current_downloads() if str(o.guid) == sys.argv[2]]
print(op.max_bytes_per_second)
op.max_bytes_per_second = 5_000_000
(op,) = [o for o in BackgroundDownloader(state_dir=sys.argv[1]).get_current_downloads()]
print(op.max_bytes_per_second)
"""


class _Multi:
    """Stands in for the multi handle a flow is woken through (the handles here are
    on none: waking them is refused by libcurl, and skipped)."""

    def kick(self) -> None:
        """Nothing to run."""


class _Taken:
    """A transfer's count of body bytes, as the test says it took them."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def test_shares_fill_what_a_capped_operation_leaves() -> None:
    """A downloader's total goes first to operations capped below their share, the
    rest evenly to the others' transfers, each granted a tick of its share at once;
    a lifted limit frees every handle."""

    async def divide() -> tuple[list[float], list[int], list[int]]:
        total = Budget(12_000_000)
        capped, free = Budget(2_000_000, total), Budget(0, total)
        handles = [pycurl.Curl() for _ in range(4)]
        capped.attach(handles[0], _Multi(), lambda: 0)
        for curl in handles[1:]:
            free.attach(curl, _Multi(), lambda: 0)
        shares = [f.share for f in capped.flows + free.flows]
        capped.regrant()
        granted = [curl.bgt_rate for curl in handles]
        total.rate = 0
        capped.rate = 0
        await asyncio.sleep(0)  # applied in the loop's next pass
        return shares, granted, [curl.bgt_rate for curl in handles]

    shares, granted, lifted = asyncio.run(divide())
    assert [round(s) for s in shares] == [2_000_000, 3_333_333, 3_333_333, 3_333_333]
    assert all(0 < g <= 0.3 * s for g, s in zip(granted, shares, strict=True)), granted
    assert lifted == [0, 0, 0, 0]


def test_a_limit_set_midway_counts_from_then() -> None:
    """A transfer that ran under no limit, when a limit is set, is granted from then
    on: the bytes it took before are no debt that would hold it for ages."""

    async def midway() -> float:
        total = Budget(0)
        op = Budget(0, total)
        curl, got = pycurl.Curl(), _Taken()
        op.attach(curl, _Multi(), got)
        got.n = 500_000_000  # fetched under no limit
        total.rate = 1_000_000
        await asyncio.sleep(0)  # the limit applies
        (flow,) = op.flows
        assert flow.granted > 0
        got.n += int(flow.granted)  # it takes its grant
        total.regrant()  # the next tick
        return total.tokens + flow.granted  # what the budget had before this grant

    assert asyncio.run(midway()) >= 0


def test_grants_never_run_ahead_of_the_rate() -> None:
    """Transfers that take every byte they are granted, and new ones that keep taking
    the place of those that end, get at most the rate over the time, plus what a
    budget holds at its start (BURST) and a tick: the count survives the churn."""
    rate = 1_000_000

    async def churn() -> tuple[int, float]:
        total = Budget(rate)
        op = Budget(0, total)
        taken = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.0:
            curl, got = pycurl.Curl(), _Taken()
            op.attach(curl, _Multi(), got)
            (flow,) = op.flows
            for _ in range(3):  # it takes all it was granted, now and after a tick
                got.n = flow.seen + int(flow.granted)
                await asyncio.sleep(0.02)
            got.n = flow.seen + int(flow.granted)
            taken += got.n
            op.detach(curl)
            curl.close()
        return taken, loop.time() - started

    taken, took = asyncio.run(churn())
    assert taken <= rate * (took + TICK + BURST), f"{taken} bytes in {took:.2f} s"


def test_a_held_transfer_takes_a_new_allowance_when_woken(nginx: Nginx) -> None:
    """The calls the grants make on a live transfer: one held at 1 byte a second,
    given a new CURLOPT_MAX_RECV_SPEED_LARGE and woken (pause(PAUSE_CONT), then
    Multi.kick), goes on under the new value and ends byte-exact (at 1 byte a second
    its 10 KiB would take hours)."""

    async def fetch() -> bytes:
        multi = new_multi()
        curl, body = pycurl.Curl(), bytearray()
        curl.setopt(pycurl.URL, nginx.url("small.bin"))
        curl.setopt(pycurl.WRITEFUNCTION, body.extend)
        curl.setopt(pycurl.MAX_RECV_SPEED_LARGE, 1)
        done = multi.add_handle(curl)
        await asyncio.sleep(0.3)
        assert len(body) <= 64, len(body)  # held
        curl.setopt(pycurl.MAX_RECV_SPEED_LARGE, 1 << 20)
        curl.pause(pycurl.PAUSE_CONT)
        multi.kick()
        await asyncio.wait_for(done, 30)
        await multi.aclose()
        curl.close()
        return bytes(body)

    assert asyncio.run(fetch()) == (nginx.www / "small.bin").read_bytes()


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


def test_a_mirror_total_limit_holds_over_many_small_files(nginx: Nginx, tmp_path: Path) -> None:
    """mirror --limit-rate 4M of 200 files of 64 KiB ends (pooled handles once stalled
    at their next file), every file byte-exact, each fetched once whole on the lean
    path, and at no more than 10% over the total: from the first response nginx sent
    to the command's end, an upper bound only."""
    tag = f"lim{os.getpid()}"
    (nginx.www / tag).mkdir()
    bodies = {f"f{i:03d}.bin": os.urandom(64 << 10) for i in range(200)}
    for name, body in bodies.items():
        (nginx.www / tag / name).write_bytes(body)
    (tmp_path / "list").write_text("".join(f"{nginx.url(f'{tag}/{n}')}\n" for n in bodies))
    done = _bgt("mirror", "-i", "list", "-d", "out", "--limit-rate", "4M", "-q", cwd=tmp_path)
    ended = time.time()  # nginx's $msec is wall-clock time too
    assert done.returncode == 0, done.stderr
    for name, body in bodies.items():
        assert (tmp_path / "out" / name).read_bytes() == body, name
    served = [
        line.split()
        for line in (nginx.root / "timed.log").read_text().splitlines()
        if f"/{tag}/" in line
    ]
    assert sorted(uri for *_, uri in served) == sorted(f"/{tag}/{n}" for n in bodies)
    # one request a file, the lean path's first range, which holds the whole file
    assert {status for _, status, _, _ in served} == {"206"}
    first = min(float(msec) for msec, *_ in served)
    rate = sum(map(len, bodies.values())) / (ended - first)
    assert rate <= 1.1 * (4 << 20), f"{rate / 1e6:.2f} MB/s"


@pytest.mark.parametrize("rate", ["10Q", "fast", "1.2.3M", ""])
def test_a_bad_rate_is_bad_usage(tmp_path: Path, rate: str) -> None:
    """--limit-rate that is not a rate: status 2 and a line that says what one is."""
    done = _bgt("get", "http://127.0.0.1:9/x", "--limit-rate", rate, cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a rate" in done.stderr
