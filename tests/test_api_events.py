"""ranges_downloaded: deferrals hold the next event back, restarts are announced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polling import wait_for
from servers import FaultServer

from engine import (
    BackgroundDownloader,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferStatus,
    Deferral,
    DownloadOperation,
)
from engine.values import merge_ranges

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]


def test_a_held_deferral_holds_the_next_event_and_loses_nothing(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """No event arrives while a deferral is open; the next one brings all that came."""
    fault_server.rate = 4 << 20
    op = make_downloader().create_download(fault_server.url, tmp_path / "d")
    events: list[tuple[float, list[tuple[int, int]]]] = []
    held: list[Deferral] = []
    first = threading.Event()

    def handler(o: DownloadOperation, args: BackgroundDownloadRangesDownloadedEventArgs) -> None:
        events.append((time.monotonic(), [(r.offset, r.length) for r in args.added_ranges]))
        if not held:
            held.append(args.get_deferral())
            first.set()

    op.ranges_downloaded.subscribe(handler)
    op.start()
    assert first.wait(20)
    time.sleep(0.6)  # the download goes on meanwhile
    assert len(events) == 1, "an event arrived while the deferral was open"
    assert op.progress.bytes_received > sum(n for _, n in events[0][1])
    released = time.monotonic()
    held[0].complete()
    held[0].complete()  # completing twice is harmless
    op.wait(30)
    deadline = time.monotonic() + 5
    while sum(n for _, ranges in events for _, n in ranges) < len(body):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert events[1][0] >= released
    assert merge_ranges([r for _, ranges in events for r in ranges]) == [(0, len(body))]
    assert sum(n for _, ranges in events for _, n in ranges) == len(body)


def test_a_handler_that_raises_does_not_stop_the_download(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """An exception in a handler goes to the loop's exception handler; the download goes on."""
    op = make_downloader().create_download(fault_server.url, tmp_path / "x")
    calls: list[int] = []

    def bad(o: DownloadOperation, args: Any) -> None:
        calls.append(1)
        raise RuntimeError("handler bug")

    op.ranges_downloaded.subscribe(bad)
    op.start().wait(30)
    assert (tmp_path / "x").read_bytes() == body
    wait_for(lambda: bool(calls))


def test_content_change_restarts_and_says_so(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """A changed ETag mid-download: was_download_restarted, has_restarted, the new bytes only."""
    new = bytes(reversed(body))
    fault_server.fault = "change"
    fault_server.new_body = new
    fault_server.fault_after = 1 << 20
    op = make_downloader(max_connections_per_file=2).create_download(
        fault_server.url, tmp_path / "c"
    )
    restarted: list[bool] = []
    progress_restarts: list[bool] = []
    changed: list[bool] = []

    def progress(o: DownloadOperation) -> None:
        snap = o.progress
        progress_restarts.append(snap.has_restarted)
        changed.append(snap.has_response_changed)

    op.ranges_downloaded.subscribe(lambda o, a: restarted.append(a.was_download_restarted))
    op.start(progress).wait(30)
    assert (tmp_path / "c").read_bytes() == new
    deadline = time.monotonic() + 5
    while True not in restarted:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert True in progress_restarts
    assert True in changed
