"""The engine against the tests' fault-injecting server: byte-exact, or a clear typed error."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import FaultHandler, FaultServer, sha256

from engine._disk.core import part_path
from engine._download.segmented import SegmentedDownload
from engine.config import TransferConfig
from engine.errors import TransportError
from engine.web_error import WebErrorStatus

Run = Callable[[Any], Any]
SIZE = 12 * 1024 * 1024 + 777
BODY = os.urandom(SIZE)
FAST = TransferConfig(
    connections=4,
    first_request=1 << 20,
    chunk_size=2 << 20,
    min_split=1 << 20,
    backoff_base=0.05,
    response_timeout=1.0,
    low_speed_limit=1024,
)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FaultServer]:
    fault, faults, after = getattr(request, "param", ("", 0, 0))
    srv = FaultServer(BODY, fault, faults=faults, after=after)
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.parametrize(
    "server",
    [
        ("reset", 3, 300_000),
        ("truncate", 3, 500_000),
        ("stall", 2, 400_000),
        ("503-once", 0, 0),
        ("no-ranges", 0, 0),
        ("no-ranges+reset", 2, 700_000),
        ("no-length", 0, 0),
        ("no-length+reset", 2, 700_000),
    ],
    indirect=True,
    ids=[
        "reset",
        "truncate",
        "stall",
        "503-retry-after",
        "no-ranges",
        "no-ranges-reset",
        "no-length",
        "no-length-reset",
    ],
)
@pytest.mark.parametrize("connections", [1, 8])
def test_transient_faults_end_byte_exact(
    server: FaultServer, tmp_path: Path, run: Run, connections: int
) -> None:
    """Resets, truncation, stalls, a 503, no ranges, no length: the file is byte-exact."""
    server.stall_seconds = 3.0
    out = tmp_path / "f.bin"
    cfg = TransferConfig(**{**FAST.__dict__, "connections": connections})
    job = SegmentedDownload(server.url, out, config=cfg)
    run(job.run())
    assert sha256(out) == sha256(BODY)
    if server.fault == "no-ranges":
        assert server.requests == 1


def test_validator_too_long_to_store_is_not_cut(tmp_path: Path, run: Run) -> None:
    """An ETag longer than the control file holds is not stored cut (it would never match)."""
    srv = FaultServer(BODY)
    srv.etag = '"' + "e" * 400 + '"'
    try:
        job = SegmentedDownload(srv.url, tmp_path / "f.bin", config=FAST)
        run(job.run())
    finally:
        srv.close()
    assert sha256(tmp_path / "f.bin") == sha256(BODY)
    assert not job.snapshot().has_restarted


@pytest.mark.parametrize("server", [("wrong-range", 0, 0)], indirect=True)
def test_wrong_content_range_is_never_written(
    server: FaultServer, tmp_path: Path, run: Run
) -> None:
    """A 206 whose Content-Range is not the range asked for is refused; no file claims success."""
    out = tmp_path / "f.bin"
    with pytest.raises(TransportError) as info:
        run(SegmentedDownload(server.url, out, config=FAST).run())
    assert info.value.web_error_status is WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE
    assert not out.exists()


@pytest.mark.parametrize("server", [("garbage", 0, 0)], indirect=True)
def test_garbage_status_line_is_typed_error(server: FaultServer, tmp_path: Path, run: Run) -> None:
    """A server answering with no HTTP status line fails with a transport error, no file."""
    out = tmp_path / "f.bin"
    with pytest.raises(TransportError):
        run(SegmentedDownload(server.url, out, config=FAST).run())
    assert not out.exists()


@pytest.mark.parametrize("server", [("change", 1, 3_000_000)], indirect=True)
def test_content_change_mid_download_restarts_whole_file(
    server: FaultServer, tmp_path: Path, run: Run
) -> None:
    """The ETag changes mid-download: the result is entirely the new version, flagged."""
    server.new_body = os.urandom(SIZE + 5000)
    out = tmp_path / "f.bin"
    job = SegmentedDownload(server.url, out, config=FAST)
    run(job.run())
    assert sha256(out) == sha256(server.new_body)
    snap = job.snapshot()
    assert snap.has_restarted
    assert snap.has_response_changed


@pytest.mark.parametrize("server", [("stall", 10_000, 3 << 19)], indirect=True)
def test_resume_fetches_only_what_is_missing(server: FaultServer, tmp_path: Path, run: Run) -> None:
    """A download cancelled half-way resumes from its bitmap: complete blocks never come again."""
    server.stall_seconds = 60.0
    out = tmp_path / "f.bin"
    cfg = TransferConfig(**{**FAST.__dict__, "response_timeout": 120.0})

    async def cancel_when_stalled() -> int:
        job = SegmentedDownload(server.url, out, config=cfg)
        task = asyncio.ensure_future(job.run())
        while job.snapshot().bytes_received < (4 << 20):  # then every connection stalls
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return job.snapshot().bytes_received

    have = run(cancel_when_stalled())
    assert not out.exists()
    assert part_path(out).exists()
    server.fault = ""
    sent_before = server.bytes_sent
    run(SegmentedDownload(server.url, out, config=cfg).run())
    assert sha256(out) == sha256(BODY)
    assert server.bytes_sent - sent_before <= SIZE - have + cfg.connections * cfg.block_size


@pytest.mark.parametrize(
    ("fault", "after"),
    [("reset", 100_000), ("truncate", 400_000), ("no-ranges+reset", 300_000)],
    ids=["reset-while-held", "truncate-past-the-hold", "no-ranges-reset"],
)
def test_a_small_body_broken_midway_is_byte_exact(
    tmp_path: Path, run: Run, fault: str, after: int
) -> None:
    """A body the first response carries is kept in memory and written by the filer as
    the file ends; a break before or after the part held spills it, and the retry
    (ranged, or from zero without ranges) continues the file where it is."""
    body = os.urandom(700_000)  # under first_request: one plain file, no bitmap
    srv = FaultServer(body, fault, faults=2, after=after)
    try:
        out = tmp_path / "small.bin"
        run(SegmentedDownload(srv.url, out, config=FAST).run())
        assert out.read_bytes() == body
        assert not part_path(out).exists()
        assert srv.requests >= 2  # it broke, and the retry finished it
    finally:
        srv.close()


def _unknown_total(body: bytes, fault: str = "", faults: int = 0, after: int = 0) -> FaultServer:
    srv = FaultServer(body, "+".join(filter(None, ["unknown-total", fault])), faults, after)
    srv.record_headers = []
    return srv


def _download(srv: FaultServer, out: Path, run: Run) -> SegmentedDownload:
    """One download of ``srv``'s body into ``out``; the server is closed after."""
    try:
        job = SegmentedDownload(srv.url, out, config=FAST)
        run(job.run())
        return job
    finally:
        srv.close()


def test_an_unknown_complete_length_is_continued_by_open_ended_ranges(
    tmp_path: Path, run: Run
) -> None:
    """206 with ``Content-Range: bytes 0-N/*`` (RFC 9110: the server does not know the
    length): a plain file, the rest asked with ``bytes=N+1-`` and If-Range, no error."""
    srv = _unknown_total(BODY)
    out = tmp_path / "f.bin"
    job = _download(srv, out, run)
    assert sha256(out) == sha256(BODY)
    first = FAST.first_request
    assert srv.ranges_seen == [f"bytes=0-{first - 1}", f"bytes={first}-"]
    assert srv.record_headers is not None
    assert srv.record_headers[1].get("If-Range") == srv.etag
    snap = job.snapshot()
    assert (snap.bytes_received, snap.has_restarted) == (SIZE, False)


@pytest.mark.parametrize(
    ("size", "requests"),
    [(300_000, 1), (FAST.first_request, 2)],
    ids=["cut-short-by-the-server", "exactly-the-first-range"],
)
def test_an_unknown_complete_length_ends_where_the_server_says(
    tmp_path: Path, run: Run, size: int, requests: int
) -> None:
    """A range the server cuts short ends the body (the representation ends there); a
    first range the body fills exactly is followed by one ask that gets 416 ``bytes */*``."""
    body = os.urandom(size)
    srv = _unknown_total(body)
    out = tmp_path / "f.bin"
    _download(srv, out, run)
    assert out.read_bytes() == body
    assert srv.requests == requests
    assert not part_path(out).exists()


def test_an_unknown_complete_length_resumes_where_it_broke(tmp_path: Path, run: Run) -> None:
    """Resets mid-body: each retry asks from the last byte received, never from zero."""
    srv = _unknown_total(BODY, "reset", faults=3, after=700_000)
    out = tmp_path / "f.bin"
    job = _download(srv, out, run)
    assert sha256(out) == sha256(BODY)
    starts = [int(r.removeprefix("bytes=").partition("-")[0]) for r in srv.ranges_seen if r]
    assert len(starts) >= 4  # three breaks, then the rest
    assert starts[0] == 0
    assert all(a < b for a, b in itertools.pairwise(starts))  # always onwards
    assert not job.snapshot().has_restarted


def test_an_unknown_complete_length_that_changes_restarts(tmp_path: Path, run: Run) -> None:
    """The content changes between two responses: If-Range brings the new version whole
    (200), and the result is that version alone, flagged."""
    srv = _unknown_total(BODY, "change", faults=1, after=3_000_000)
    srv.new_body = os.urandom(SIZE - 4000)
    out = tmp_path / "f.bin"
    job = _download(srv, out, run)
    assert sha256(out) == sha256(srv.new_body)
    snap = job.snapshot()
    assert snap.has_restarted
    assert snap.has_response_changed


def test_a_416_of_an_empty_file_leaves_its_error_page_out(tmp_path: Path, run: Run) -> None:
    """A 416 ``bytes */0`` says the file is empty: the error page it carries is not the
    file's content (it was written as the file)."""
    page = b"<html>416 Requested Range Not Satisfiable</html>"

    def respond(h: FaultHandler, send_body: bool) -> bool:
        h.wfile.write(
            b"HTTP/1.1 416 X\r\nContent-Range: bytes */0\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(page)
        )
        if send_body:
            h.wfile.write(page)
        h.close_connection = True
        return True

    srv = FaultServer(b"")
    srv.script = respond
    out = tmp_path / "empty.bin"
    _download(srv, out, run)
    assert out.read_bytes() == b""
