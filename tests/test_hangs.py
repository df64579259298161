"""A download that times out, stalls or trickles ends in its own error, and never
holds another: each against a real misbehaving server on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from hostile import RawServer, SilentServer, ok, ranged, stall_after

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    TransferConfig,
    TransferError,
    TransferTimeoutError,
)
from engine.cli.commands import wait_all
from engine.cli.views import Waits

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
QUICK = TransferConfig(
    poll_interval=0.05, backoff_base=0.05, backoff_max=0.2, retries=1, response_timeout=1
)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_a_transfer_timeout_ends_wait_with_that_error(
    silent: SilentServer, make_downloader: Make, tmp_path: Path
) -> None:
    """wait() raises the download's TransferTimeoutError, not its own "not finished"."""
    op = make_downloader(config=QUICK).create_download(silent.url, tmp_path / "x")
    op.start()
    with pytest.raises(TransferTimeoutError) as info:
        op.wait()
    assert "not finished after" not in str(info.value)
    assert op.status is S.ERROR


def test_the_cli_wait_loop_ends_with_the_operations_timeout(
    silent: SilentServer, make_downloader: Make, tmp_path: Path
) -> None:
    """The command's wait loop returns the timeout as the operation's error, once."""
    d = make_downloader(config=QUICK)
    op = d.create_download(silent.url, tmp_path / "x")
    op.start()
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(wait_all([op], Waits(0))), daemon=True)
    waiter.start()
    waiter.join(60)
    assert not waiter.is_alive(), "the wait loop never ended"
    (errors,) = result
    assert [type(e) for e in errors] == [TransferTimeoutError]  # type: ignore[attr-defined]


SMALL = os.urandom(50_000)
BIG = os.urandom(4 << 20)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server context for 127.0.0.1 offering HTTP/1.1 only, and the CA file to trust."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_one_stalled_download_never_holds_the_others_of_its_host(
    make_downloader: Make,
    tmp_path: Path,
    scheme: str,
    tls_files: tuple[ssl.SSLContext, str],
) -> None:
    """A file stalled (before or after its headers) leaves every other file of its host
    free to be fetched, over http and over https (HTTP/1.1 by ALPN)."""
    release = threading.Event()

    def respond(path: str, headers: dict[str, str], conn: socket.socket) -> None:
        if path == "/stall.bin":
            release.wait(60)
            conn.close()
        elif path == "/half.bin":
            stall_after(conn, BIG, len(BIG) // 2, 0)
            release.wait(60)
            conn.close()
        else:
            ok(conn, SMALL)

    context, ca_file = tls_files
    server = RawServer(respond, context if scheme == "https" else None)
    try:
        config = TransferConfig(poll_interval=0.05, response_timeout=60, ca_file=ca_file)
        d = make_downloader(config=config)
        stalled = [
            d.create_download(server.url(n), tmp_path / n) for n in ("stall.bin", "half.bin")
        ]
        for op in stalled:
            op.start()  # the others at once: the stalls' first answers are not known yet
        small = [d.create_download(server.url(f"s{i}"), tmp_path / f"s{i}") for i in range(6)]
        for op in small:
            op.start()
        for op in small:
            op.wait(30)
            assert op.result_file.read_bytes() == SMALL
        assert [op.status for op in stalled] == [S.RUNNING, S.RUNNING]
    finally:
        release.set()
        server.close()


def test_a_content_range_past_its_stated_total_is_refused(
    make_downloader: Make, tmp_path: Path
) -> None:
    """``206 bytes 0-4194303/100``: an error naming the bad range, no file."""
    body = os.urandom(4 << 20)

    def respond(path: str, headers: dict[str, str], conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4194303/100\r\n"
            b"Content-Length: 4194304\r\n\r\n" + body
        )

    server = RawServer(respond)
    try:
        op = make_downloader(config=QUICK).create_download(server.url(), tmp_path / "x")
        with pytest.raises(TransferError, match="0-4194303/100"):
            op.start().wait(60)
        assert not (tmp_path / "x").exists()
    finally:
        server.close()


def test_a_trickle_below_the_minimum_rate_fails_however_long_it_lasts(
    make_downloader: Make, tmp_path: Path
) -> None:
    """Requests that each make a little progress below the low-speed limit still count
    as failures: the download ends in TransferTimeoutError after ``retries`` of them."""
    body = os.urandom(200_000)

    def respond(path: str, headers: dict[str, str], conn: socket.socket) -> None:
        ranged(conn, headers, body, piece=20, every=0.1)

    server = RawServer(respond)
    config = TransferConfig(
        poll_interval=0.05,
        backoff_base=0.05,
        backoff_max=0.1,
        retries=2,
        response_timeout=1,
        low_speed_limit=1000,
    )
    try:
        op = make_downloader(config=config).create_download(server.url(), tmp_path / "x")
        with pytest.raises(TransferTimeoutError):
            op.start().wait(60)
        assert len(server.seen) == 3  # the first request and two retries, no more
        assert not (tmp_path / "x").exists()
    finally:
        server.close()


def test_max_time_bounds_a_download_that_never_answers(
    silent: SilentServer, tmp_path: Path
) -> None:
    """get --max-time 1 (curl's name) against a server that never answers: exit 1 with
    the timeout, not a wait for the 120 s response timeout or for ever."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "get",
            silent.url,
            "--max-time",
            "1",
            "-q",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "maximum time (1 s)" in done.stderr


def test_a_cancellation_nobody_asked_for_fails_the_download_instead_of_hanging(
    silent: SilentServer, make_downloader: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CancelledError leaking out of a download (a bug below the runner, injected
    here: no server can cause one) fails it with an internal error; wait() returns."""
    from engine._download.segmented import SegmentedDownload

    async def leak(self: SegmentedDownload) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(SegmentedDownload, "run", leak)
    op = make_downloader(config=QUICK).create_download(silent.url, tmp_path / "x")
    op.start()
    with pytest.raises(TransferError, match="internal error") as info:
        op.wait(timeout=20)
    assert "not finished after" not in str(info.value)
    assert op.status is S.ERROR
    assert not (tmp_path / "x").exists()
