"""Failed operations kept with their data, what ended remembered, and their expiry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer

from engine import BackgroundDownloader, BackgroundTransferStatus, HttpError
from engine._disk.core import control_path, part_path

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]


def _fail_midway(d: BackgroundDownloader, server: FaultServer, out: Path) -> None:
    """Start a download, let it make its control file, then have the server 404 (the
    downloader's one connection asks for the rest in a request of its own)."""
    op = d.create_download(server.url, out)
    op.start()
    wait_for(control_path(out).exists)
    wait_for(lambda: op.progress.bytes_received > 0)
    server.fault = "404"
    with pytest.raises(HttpError):
        op.wait(60)
    server.fault = ""


def test_a_failure_seen_is_kept_with_its_reason_and_continues_from_a_new_url(
    make_downloader: Make, body: bytes, tmp_path: Path
) -> None:
    """After wait() raised, the operation is no longer current but is among the failed
    ones, its error and partial data kept; a new requested_uri and resume() finish it."""
    server = FaultServer(body)
    server.rate = 4 << 20
    try:
        d = make_downloader(max_connections_per_file=1)
        out = tmp_path / "f.bin"
        _fail_midway(d, server, out)
        assert d.get_current_downloads() == []
        (op,) = d.get_failed_downloads()
        assert op.status is S.ERROR
        assert op.error is not None
        assert "HTTP 404" in str(op.error)
        assert part_path(out).exists()
        server.rate = 0
        op.requested_uri = server.url + "?moved=1"
        op.resume()
        op.wait(60)
        assert out.read_bytes() == body
        assert d.get_failed_downloads() == []
    finally:
        server.close()


def test_expire_cancels_old_failures_but_never_a_newer_operations_data(
    make_downloader: Make, body: bytes, tmp_path: Path
) -> None:
    """expire(0) removes a failure's data; a failure whose file a newer operation took
    is only forgotten, the newer operation's partial data left whole."""
    server = FaultServer(body)
    server.rate = 4 << 20
    try:
        d = make_downloader(max_connections_per_file=1)
        kept, taken = tmp_path / "kept.bin", tmp_path / "taken.bin"
        _fail_midway(d, server, kept)
        _fail_midway(d, server, taken)
        newer = d.create_download(server.url, taken)
        sent = server.bytes_sent
        newer.start()
        wait_for(lambda: server.bytes_sent > sent + (1 << 20))
        newer.pause()
        have = newer.progress.bytes_received
        gone = d.expire(0)
        assert [op.result_file for op in gone] == [kept]
        assert not part_path(kept).exists()
        assert not control_path(kept).exists()
        assert d.get_failed_downloads() == []
        assert part_path(taken).exists()
        assert newer.progress.bytes_received >= have > 0
        server.rate = 0
        newer.resume()
        newer.wait(60)
        assert taken.read_bytes() == body
    finally:
        server.close()


def test_ended_operations_are_remembered_until_they_expire(
    make_downloader: Make, body: bytes, tmp_path: Path
) -> None:
    """A completed and a canceled operation are listed as ended, oldest first, with
    their URL and file, until expire forgets them."""
    server = FaultServer(body)
    try:
        d = make_downloader()
        done = d.create_download(server.url, tmp_path / "done.bin")
        done.start().wait(60)
        canceled = d.create_download(server.url, tmp_path / "canceled.bin")
        canceled.cancel()
        ended = d.get_ended_downloads()
        assert [(e.guid, e.status, e.result_file) for e in ended] == [
            (done.guid, S.COMPLETED, tmp_path / "done.bin"),
            (canceled.guid, S.CANCELED, tmp_path / "canceled.bin"),
        ]
        assert ended[0].requested_uri == server.url
        d.expire(3600)
        assert len(d.get_ended_downloads()) == 2
        d.expire(-1)  # everything is older than a second from now
        assert d.get_ended_downloads() == []
    finally:
        server.close()
