"""DownloadOperation against real servers: every member, start to end."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from servers import FaultServer, Nginx, ProxyServer, sha256

import engine
from engine import (
    BackgroundDownloader,
    BackgroundDownloadProgress,
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Credential,
    DownloadOperation,
    HttpError,
    InvalidRequestError,
    InvalidStateError,
    ResultFileInUseError,
    StorageError,
    TransferCanceled,
    TransportError,
    WebErrorStatus,
)
from engine._disk.core import control_path, part_path

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
Run = Callable[[Any], Any]


def no_partial(path: Path) -> bool:
    return not part_path(path).exists() and not control_path(path).exists()


def test_download_completes_byte_exact_with_progress(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, run: Run
) -> None:
    """start_async resolves to the operation; progress is monotonic and ends COMPLETED."""
    out = tmp_path / "big.bin"
    op = make_downloader().create_download(nginx.url("big.bin"), out)
    assert op.progress == BackgroundDownloadProgress(0, 0, S.IDLE, False, False)
    seen: list[BackgroundDownloadProgress] = []

    async def go() -> DownloadOperation:
        return await op.start_async(lambda o: seen.append(o.progress))

    assert run(go()) is op
    size = (nginx.www / "big.bin").stat().st_size
    assert sha256(out) == sha256(nginx.www / "big.bin")
    assert no_partial(out)
    assert op.status is S.COMPLETED
    assert op.progress.bytes_received == op.progress.total_bytes_to_receive == size
    received = [p.bytes_received for p in seen]
    assert received == sorted(received)
    assert seen[-1].status is S.COMPLETED
    assert op.current_web_error_status is None


def test_blocking_start_and_wait(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """start() returns at once; wait() blocks until COMPLETED, for code without asyncio."""
    out = tmp_path / "small.bin"
    op = make_downloader().create_download(nginx.url("small.bin"), out)
    assert op.start() is op
    assert op.wait(timeout=30) is op
    assert out.read_bytes() == (nginx.www / "small.bin").read_bytes()


def test_empty_file(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """A zero-byte body completes as an empty file."""
    out = tmp_path / "empty.bin"
    make_downloader().create_download(nginx.url("empty.bin"), out).start().wait(30)
    assert out.read_bytes() == b""


def test_response_information(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """None before a response; after, the URI, the headers as sent, resumable, the status."""
    op = make_downloader().create_download(nginx.url("big.bin"), tmp_path / "b")
    assert op.get_response_information() is None
    op.start().wait(60)
    info = op.get_response_information()
    assert info is not None
    assert info.actual_uri == nginx.url("big.bin")
    assert info.status_code == 200
    assert info.wire_status_code == 206
    assert info.is_resumable
    assert info.headers["ETag"].startswith('"')


def test_ranges_downloaded_events_cover_the_file(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """Events bring sorted, merged, new ranges; together they cover the file once."""
    out = tmp_path / "big.bin"
    op = make_downloader().create_download(nginx.url("big.bin"), out)
    added: list[tuple[int, int]] = []

    def handler(o: DownloadOperation, args: Any) -> None:
        pairs = [(r.offset, r.length) for r in args.added_ranges]
        assert pairs == sorted(pairs)
        added.extend(pairs)

    token = op.ranges_downloaded.subscribe(handler)
    op.start().wait(60)
    wait_for(lambda: sum(n for _, n in added) == out.stat().st_size)
    covered = sorted(added)
    for (a, n), (b, _) in itertools.pairwise(covered):
        assert a + n <= b  # no byte reported twice
    op.ranges_downloaded.unsubscribe(token)
    assert [(r.offset, r.length) for r in op.get_downloaded_ranges()] == [(0, out.stat().st_size)]


def test_pause_then_resume_continues_from_the_bitmap(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Paused mid-file, then resumed: byte-exact, and the server sends little twice."""
    fault_server.rate = 4 << 20
    out = tmp_path / "f.bin"
    op = make_downloader(max_connections_per_file=4).create_download(fault_server.url, out)
    op.start()
    wait_for(lambda: op.progress.bytes_received >= len(body) // 4)
    op.pause()
    assert op.status is S.PAUSED_BY_APPLICATION
    time.sleep(0.3)
    paused_at = op.progress.bytes_received
    assert 0 < paused_at < len(body)
    assert not out.exists()
    assert control_path(out).exists()
    fault_server.rate = 0
    op.resume()
    assert op.wait(60) is op
    assert out.read_bytes() == body
    assert fault_server.bytes_sent <= len(body) + 4 * (1 << 16) + 4 * (4 << 20) // 10


def test_cancel_removes_partial_data(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """cancel(): CANCELED, no file under any name, the waiter gets TransferCanceled."""
    fault_server.rate = 2 << 20
    out = tmp_path / "f.bin"
    op = make_downloader().create_download(fault_server.url, out)
    op.start()
    wait_for(lambda: op.progress.bytes_received > 0)
    op.cancel()
    assert op.status is S.CANCELED
    with pytest.raises(TransferCanceled):
        op.wait(10)
    assert not out.exists()
    assert no_partial(out)
    with pytest.raises(InvalidStateError):
        op.resume()


async def cancel_once_bytes_arrive(op: DownloadOperation, awaiting: Any) -> None:
    """Await ``awaiting`` in a task, and cancel that task once the first bytes are in."""
    task = asyncio.ensure_future(awaiting)
    while op.progress.bytes_received == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancelling_the_awaiting_task_cancels_the_download(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path, run: Run
) -> None:
    """Cancelling the task that awaits start_async cancels the operation."""
    fault_server.rate = 1 << 20
    out = tmp_path / "f.bin"
    op = make_downloader().create_download(fault_server.url, out)
    run(cancel_once_bytes_arrive(op, op.start_async()))
    assert op.status is S.CANCELED
    wait_for(lambda: no_partial(out))


def test_cancelling_a_task_in_wait_async_leaves_the_download(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path, run: Run
) -> None:
    """wait_async() is wait() for asyncio: cancelling its task cancels the waiting only."""
    fault_server.rate = 1 << 20
    out = tmp_path / "f.bin"
    op = make_downloader().create_download(fault_server.url, out)
    op.start()
    run(cancel_once_bytes_arrive(op, op.wait_async()))
    assert op.status is S.RUNNING
    fault_server.rate = 0
    assert run(op.wait_async()) is op
    assert out.read_bytes() == body


def test_run_drives_operations_from_the_engine_loop(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """engine.run(main): main runs on the engine's own thread; its result or exception
    comes back; run() from inside the engine loop is refused."""
    d = make_downloader()

    async def main() -> tuple[str, DownloadOperation]:
        op = d.create_download(nginx.url("small.bin"), tmp_path / "small.bin")
        return threading.current_thread().name, await op.start_async()

    thread, op = engine.run(main())
    assert thread == "bgtransfer-engine"
    assert op.status is S.COMPLETED
    assert (tmp_path / "small.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()

    async def fails() -> None:
        d.create_download("ftp://", tmp_path / "x")

    with pytest.raises(InvalidRequestError):
        engine.run(fails())

    async def nested() -> None:
        inner = fails()
        try:
            engine.run(inner)
        finally:
            inner.close()

    with pytest.raises(RuntimeError, match="engine loop"):
        engine.run(nested())


def test_illegal_calls_raise_and_change_nothing(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """resume() on IDLE/COMPLETED, pause() on IDLE, a second start: clear errors only."""
    d = make_downloader()
    op = d.create_download(nginx.url("small.bin"), tmp_path / "s")
    for call in (op.resume, op.pause):
        with pytest.raises(InvalidStateError):
            call()
        assert op.status is S.IDLE
    with pytest.raises(InvalidStateError):
        op.requested_uri = nginx.url("big.bin")
    op.is_random_access_required = True
    op.is_random_access_required = False
    op.start().wait(30)
    with pytest.raises(InvalidStateError):
        op.start()
    with pytest.raises(InvalidStateError):
        op.is_random_access_required = True
    for call in (op.resume, op.pause, op.cancel):
        with pytest.raises(InvalidStateError):
            call()
        assert op.status is S.COMPLETED
    assert d.get_current_downloads() == []


def test_http_error_ends_in_error_without_a_file(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """A 404 is ERROR with NOT_FOUND and an HttpError; no file appears."""
    out = tmp_path / "missing"
    op = make_downloader().create_download(nginx.url("nope.bin"), out)
    with pytest.raises(HttpError) as info:
        op.start().wait(30)
    assert info.value.status_code == 404
    assert info.value.guid == op.guid
    assert op.status is S.ERROR
    assert op.current_web_error_status is WebErrorStatus.NOT_FOUND
    assert not out.exists()


def test_recoverable_status_pauses_and_a_new_uri_resumes(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """A listed WebErrorStatus pauses; set requested_uri, resume(), and it completes."""
    out = tmp_path / "r.bin"
    op = make_downloader().create_download(nginx.url("expired.bin"), out)
    op.recoverable_web_error_statuses.add(WebErrorStatus.NOT_FOUND)
    op.start()
    wait_for(lambda: op.status is S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS)
    assert op.current_web_error_status is WebErrorStatus.NOT_FOUND
    op.requested_uri = nginx.url("big.bin")
    op.resume()
    op.wait(60)
    assert op.requested_uri == nginx.url("big.bin")
    assert sha256(out) == sha256(nginx.www / "big.bin")
    assert op.current_web_error_status is None


def test_new_uri_with_same_validators_continues_from_bitmap(
    body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """A refreshed URI serving the same version only sends what is missing."""
    first, second = FaultServer(body), FaultServer(body)
    try:
        first.rate = 4 << 20
        second.last_modified = first.last_modified
        op = make_downloader(max_connections_per_file=2).create_download(first.url, tmp_path / "f")
        op.start()
        wait_for(lambda: op.progress.bytes_received >= len(body) // 2)
        op.pause()
        have = op.progress.bytes_received
        op.requested_uri = second.url
        op.resume()
        op.wait(60)
        assert (tmp_path / "f").read_bytes() == body
        assert second.bytes_sent <= len(body) - have + 2 * (1 << 16) + 2 * (64 << 10)
    finally:
        first.close()
        second.close()


def test_request_headers_downloader_and_operation(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """Downloader headers go on every request; per-op ones are set, joined, removed."""
    seen: list[dict[str, str]] = []
    d = make_downloader()
    d.set_request_header("X-App", "one")
    op = d.create_download(fault_server.url, tmp_path / "h")
    op.set_request_header("X-Op", "a")
    op.set_request_header("x-op", "b")
    op.set_request_header("X-Gone", "z")
    op.remove_request_header("x-gone")
    fault_server.record_headers = seen
    op.start().wait(30)
    assert seen
    assert all(h.get("X-App") == "one" for h in seen)
    assert all(h.get("X-Op") == "a, b" for h in seen)
    assert all("X-Gone" not in h for h in seen)
    for bad in ("a\r\nInjected: 1", "a\nb", "a\0"):
        with pytest.raises(InvalidRequestError):
            op.set_request_header("X-Bad", bad)
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            d.set_request_header("X-Bad", bad)
    with pytest.raises(InvalidRequestError):
        d.set_request_header("Bad Name", "v")
    # the engine's own: each connection asks for its range (a caller's Range made every
    # 206 "not the range asked for", and the download failed after its retries)
    for name in ("Range", "if-range"):
        with pytest.raises(InvalidRequestError, match="bgtransfer's own"):
            d.set_request_header(name, "bytes=0-9")
        with pytest.raises(InvalidRequestError, match="bgtransfer's own"):
            op.set_request_header(name, "bytes=0-9")


def test_a_password_in_the_url_is_refused(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """A URL with user:password would put the password in the state database: refused,
    and the error does not repeat it; a user name alone is fine (SFTP logs in with it)."""
    d = make_downloader()
    for url in ("http://alice:s3cret@127.0.0.1:1/f", "ftp://alice:s3cret@127.0.0.1:1/f"):
        with pytest.raises(InvalidRequestError, match="server_credential") as refused:
            d.create_download(url, tmp_path / "f")
        assert "s3cret" not in str(refused.value)
        assert "alice:***@127.0.0.1:1/f" in str(refused.value)
    named = d.create_download("sftp://alice@127.0.0.1:1/f", tmp_path / "named")
    assert named.requested_uri == "sftp://alice@127.0.0.1:1/f"
    fault_server.rate = 1 << 20
    op = d.create_download(fault_server.url, tmp_path / "paused")
    op.start()
    wait_for(lambda: op.progress.bytes_received > 0)
    op.pause()
    with pytest.raises(InvalidRequestError, match="server_credential"):
        op.requested_uri = fault_server.url.replace("//", "//alice:s3cret@")
    assert op.requested_uri == fault_server.url
    op.cancel()
    for stored in (tmp_path / "state").glob("operations.sqlite3*"):  # the log too
        assert b"s3cret" not in stored.read_bytes()


def test_server_credential(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """server_credential answers the server's challenge; without it the result is 401."""
    fault_server.auth = "user:secret"
    d = make_downloader(server_credential=Credential("user", "secret"))
    d.create_download(fault_server.url, tmp_path / "ok").start().wait(30)
    assert (tmp_path / "ok").read_bytes() == body
    bare = make_downloader().create_download(fault_server.url, tmp_path / "no")
    with pytest.raises(HttpError):
        bare.start().wait(30)
    assert bare.current_web_error_status is WebErrorStatus.UNAUTHORIZED
    assert "secret" not in (tmp_path / "state" / "operations.sqlite3").read_bytes().decode(
        "latin-1"
    )


def test_post_with_a_body_file_and_with_a_stream(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path, run: Run
) -> None:
    """POST sends the body (file, bytes or async iterable); the response is the result."""
    d = make_downloader()
    payload = tmp_path / "payload"
    payload.write_bytes(b"hello " * 1000)
    op = d.create_download(fault_server.url, tmp_path / "echo1", payload)
    assert op.method == "POST"
    op.start().wait(30)
    assert (tmp_path / "echo1").read_bytes() == payload.read_bytes()
    with pytest.raises(InvalidStateError):
        op.pause()

    async def chunks() -> Any:
        for i in range(3):
            yield f"part{i};".encode()

    async def go() -> None:
        op2 = await d.create_download_async(fault_server.url, tmp_path / "echo2", chunks())
        await op2.start_async()
        op3 = await d.create_download_async(fault_server.url, tmp_path / "echo3", b"raw")
        await op3.start_async()

    run(go())
    explicit = make_downloader(method="post").create_download(
        fault_server.url, tmp_path / "echo4", payload
    )
    assert explicit.method == "POST"
    explicit.start().wait(30)
    assert (tmp_path / "echo4").read_bytes() == payload.read_bytes()
    with pytest.raises(InvalidRequestError):
        make_downloader(method="GET /x HTTP/1.1\r\n")
    assert not list((tmp_path / "state" / "bodies").iterdir())  # kept only until done
    assert (tmp_path / "echo2").read_bytes() == b"part0;part1;part2;"
    assert (tmp_path / "echo3").read_bytes() == b"raw"


def test_a_post_body_is_streamed_and_sent_again_when_asked(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """The body goes from its file as it is sent, and whole again when the server asks
    for it twice: after a 307, then after an authentication challenge."""
    payload = tmp_path / "payload"
    data = os.urandom(6 << 20)
    payload.write_bytes(data)
    fault_server.fault = "post-307"
    fault_server.location = fault_server.url.replace("file.bin", "again")
    fault_server.auth = "user:secret"
    d = make_downloader(server_credential=Credential("user", "secret"))
    op = d.create_download(fault_server.url, tmp_path / "echo", payload)
    op.start().wait(30)
    assert (tmp_path / "echo").read_bytes() == data
    assert len(fault_server.post_seen) == 3  # the 307, the 401, the answer
    assert all(seen == data for seen in fault_server.post_seen)


_POST_CHILD = """
import sys
from engine import BackgroundDownloader
url, result, body, state = sys.argv[1:]
op = BackgroundDownloader(state_dir=state).create_download(url, result, body)
op.start().wait(120)
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
"""


def test_a_large_post_body_is_not_held_in_memory(fault_server: FaultServer, tmp_path: Path) -> None:
    """A 128 MiB body (a sparse file) is read from its file as libcurl sends it, never
    whole into memory: read first, as it was, it took the peak RSS of the process to
    187 MB (55-58 MB now)."""
    body = tmp_path / "body"
    with body.open("wb") as fh:
        fh.truncate(128 << 20)
    result = tmp_path / "echo"
    done = subprocess.run(
        [sys.executable, "-c", _POST_CHILD, fault_server.url, str(result), str(body),
         str(tmp_path / "state")],
        cwd=tmp_path,  # -c puts the working directory first: not the source tree's engine
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stdout.split()[-1])
    assert result.stat().st_size == 128 << 20
    assert peak_kib < 100 << 10, f"peak RSS {peak_kib} KiB"


def test_a_post_body_gone_before_the_start_is_a_storage_error(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """A body file removed after the operation was made fails it with a typed error
    that names the file, and nothing is sent."""
    payload = tmp_path / "payload"
    payload.write_bytes(b"x" * 100)
    op = make_downloader().create_download(fault_server.url, tmp_path / "echo", payload)
    payload.unlink()
    with pytest.raises(StorageError, match="request body unreadable"):
        op.start().wait(30)
    assert op.status is S.ERROR
    assert fault_server.post_seen == []
    assert not (tmp_path / "echo").exists()


def test_same_result_file_refused_same_uri_twice_fine(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """Two live operations on one result file: refused; one URI to two files: both work."""
    d = make_downloader()
    a = d.create_download(nginx.url("big.bin"), tmp_path / "a")
    with pytest.raises(ResultFileInUseError):
        d.create_download(nginx.url("small.bin"), tmp_path / "a")
    with pytest.raises(ResultFileInUseError):
        make_downloader().create_download(nginx.url("small.bin"), str(tmp_path / "." / "a"))
    b = d.create_download(nginx.url("big.bin"), tmp_path / "b")
    a.start()
    b.start()
    a.wait(60)
    b.wait(60)
    assert sha256(tmp_path / "a") == sha256(tmp_path / "b") == sha256(nginx.www / "big.bin")
    again = d.create_download(nginx.url("small.bin"), tmp_path / "a")  # a has ended
    again.start().wait(30)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("no-ranges", WebErrorStatus.INSUFFICIENT_RANGE_SUPPORT),
        ("no-length", WebErrorStatus.MISSING_CONTENT_LENGTH_SUPPORT),
    ],
)
def test_random_access_needs_ranges_and_length(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path, fault: str, status: Any
) -> None:
    """is_random_access_required fails at once on a server that cannot serve it."""
    fault_server.fault = fault
    op = make_downloader().create_download(fault_server.url, tmp_path / "r")
    op.is_random_access_required = True
    assert op.is_random_access_required
    with pytest.raises(TransportError):
        op.start().wait(30)
    assert op.current_web_error_status is status
    assert not (tmp_path / "r").exists()


def test_bad_requests_are_typed(make_downloader: Make, tmp_path: Path) -> None:
    """A bad URI, a directory as result, a missing directory: InvalidRequestError."""
    d = make_downloader()
    for uri in ("file:///etc/passwd", "not a url", "http://", "gopher://x/", "http://[::1/x"):
        with pytest.raises(InvalidRequestError):
            d.create_download(uri, tmp_path / "x")
    with pytest.raises(InvalidRequestError):
        d.create_download("http://127.0.0.1/x", tmp_path)
    with pytest.raises(InvalidRequestError):
        d.create_download("http://127.0.0.1/x", tmp_path / "no" / "x")
    (tmp_path / "one" / "sub").mkdir(parents=True)  # the folder's only subdirectory
    with pytest.raises(InvalidRequestError, match="must be a file path"):
        d.create_download("http://127.0.0.1/x", tmp_path / "one" / "sub")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidRequestError, match="no such directory"):
        d.create_download("http://127.0.0.1/x", tmp_path / "file" / "x")
    with pytest.raises(InvalidRequestError):
        make_downloader(max_connections_per_file=0)


def test_settable_members_persist(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """priority and cost_policy are settable and stored; method, result_file, guid as made."""
    d = make_downloader(priority=BackgroundTransferPriority.LOW)
    op = d.create_download(nginx.url("small.bin"), tmp_path / "p")
    assert op.priority is BackgroundTransferPriority.LOW
    op.priority = BackgroundTransferPriority.HIGH
    op.cost_policy = BackgroundTransferCostPolicy.UNRESTRICTED_ONLY
    assert op.method == "GET"
    assert op.result_file == tmp_path / "p"
    assert op.transfer_group is None
    from engine._state.store import Store

    rec = Store.at(tmp_path / "state").get(str(op.guid))
    assert rec is not None
    assert rec.priority == BackgroundTransferPriority.HIGH.value
    assert rec.cost_policy == BackgroundTransferCostPolicy.UNRESTRICTED_ONLY.value


def test_proxy_with_credential(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Requests go through the proxy, which gets proxy_credential; without it, 407."""
    proxy = ProxyServer(auth="p:q")
    try:
        d = make_downloader(proxy=proxy.url, proxy_credential=Credential("p", "q"))
        d.create_download(fault_server.url, tmp_path / "via").start().wait(30)
        assert (tmp_path / "via").read_bytes() == body
        assert proxy.relayed
        assert all(u == fault_server.url for u in proxy.relayed)
        bare = make_downloader(proxy=proxy.url).create_download(fault_server.url, tmp_path / "no")
        with pytest.raises(HttpError):
            bare.start().wait(30)
        assert bare.current_web_error_status is WebErrorStatus.PROXY_AUTHENTICATION_REQUIRED
    finally:
        proxy.close()


def _paused_after_a_mib(fault_server: FaultServer, make: Make, out: Path) -> DownloadOperation:
    """A download over one slow connection, paused once a MiB is in (rate left slow)."""
    fault_server.rate = 4 << 20
    op = make(max_connections_per_file=1).create_download(fault_server.url, out)
    op.start()
    wait_for(lambda: op.progress.bytes_received >= 1 << 20)
    op.pause()
    time.sleep(0.2)
    return op


def test_a_block_whose_hash_no_longer_matches_is_fetched_again(
    fault_server: FaultServer,
    body: bytes,
    make_downloader: Make,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data damaged on disk while paused, then a reboot: resume re-checks hashes and
    fetches that block."""
    out = tmp_path / "h.bin"
    monkeypatch.setenv("BGTRANSFER_BOOT_ID", "boot-before")
    op = _paused_after_a_mib(fault_server, make_downloader, out)
    with part_path(out).open("r+b") as fh:
        fh.seek(1000)
        fh.write(bytes([body[1000] ^ 0xFF]))
    monkeypatch.setenv("BGTRANSFER_BOOT_ID", "boot-after")
    fault_server.rate = 0
    op.resume()
    op.wait(30)
    assert out.read_bytes() == body


def test_a_finished_operation_the_app_dropped_is_freed(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """The engine keeps one object per operation only while someone holds it: a
    process that runs thousands does not keep them all (a mirror grew 40 MB)."""
    op = make_downloader().create_download(nginx.url("small.bin"), tmp_path / "s.bin")
    op.start().wait(timeout=30)
    ref = weakref.ref(op)
    del op
    wait_for(lambda: gc.collect() >= 0 and ref() is None)


def test_a_dropped_operation_still_tells_its_callback_the_end(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """Started with a progress callback and let go at once: the download runs to its
    end, and the callback is told COMPLETED (the queued report keeps it alive)."""
    statuses: list[BackgroundTransferStatus] = []
    d = make_downloader()
    for i in range(20):
        d.create_download(nginx.url("small.bin"), tmp_path / f"f{i}").start(
            lambda op: statuses.append(op.progress.status)
        )
    wait_for(lambda: statuses.count(S.COMPLETED) == 20)
    assert all((tmp_path / f"f{i}").exists() for i in range(20))


def test_a_finished_operation_is_freed_without_the_cycle_collector(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, run: Run
) -> None:
    """Nothing an operation holds points back at it for good (its outcome, its
    progress reporter, its readers): once done and let go, reference counting alone
    frees it, whether it was waited for with wait() or awaited."""
    d = make_downloader()
    seen: list[int] = []
    gc.disable()
    try:
        op = d.create_download(nginx.url("small.bin"), tmp_path / "a.bin")
        assert op.start(lambda o: seen.append(o.progress.bytes_received)).wait(30) is op
        ref = weakref.ref(op)
        del op
        wait_for(lambda: ref() is None)

        async def awaited() -> weakref.ref[DownloadOperation]:
            op = d.create_download(nginx.url("small.bin"), tmp_path / "b.bin")
            assert await op.start_async() is op
            return weakref.ref(op)

        ref = run(awaited())
        wait_for(lambda: ref() is None)
    finally:
        gc.enable()
    assert seen  # the callback was told


@pytest.mark.parametrize("name", ["small.bin", "big.bin"])
def test_a_new_operation_replaces_partial_files_nobody_knows(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, name: str
) -> None:
    """Partial and control files under the result's name that no state database knows
    (their state directory lost, say) are not resumed by a new operation, which does
    not look for them: they are replaced, and none outlives the result.  The small
    body ends in memory (the filer makes its file), the big one is a range file."""
    out = tmp_path / name
    part_path(out).write_bytes(b"stale partial data " * 1000)
    control_path(out).write_bytes(b"not a control file")
    op = make_downloader().create_download(nginx.url(name), out)
    op.start()
    assert op.wait(60) is op
    assert sha256(out) == sha256(nginx.www / name)
    assert no_partial(out)


def test_a_control_file_whose_data_is_gone_starts_over(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Paused, then the partial file is deleted: the resume starts over, byte-exact,
    instead of failing on a control file with nothing to resume."""
    out = tmp_path / "gone.bin"
    op = _paused_after_a_mib(fault_server, make_downloader, out)
    assert control_path(out).exists()
    part_path(out).unlink()
    fault_server.rate = 0
    op.resume()
    assert op.wait(60) is op
    assert out.read_bytes() == body
    assert no_partial(out)
