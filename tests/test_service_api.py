"""``BackgroundDownloader(service=True)``: the API's classes with operations in the service."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from servers import FaultServer, Nginx
from service_env import ServiceEnv, own_file, svc_fixture  # noqa: F401 (a fixture)

from engine import (
    BackgroundDownloader,
    BackgroundTransferCompletionGroup,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    TransferCanceled,
)
from engine.service.api import RemoteOperation
from engine.service.client import ServiceClient

S = BackgroundTransferStatus
HERE = Path(__file__).parent


@pytest.fixture
def slow(nginx: Nginx, request: pytest.FixtureRequest) -> tuple[str, bytes]:
    name, data = own_file(nginx.www, request.node.name, 16 * 1024 * 1024 + 99)
    return nginx.url(f"slow/{name}"), data


def test_start_async_runs_in_the_service_and_reports_on_the_callers_loop(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """service=True gives a BackgroundDownloader whose operation runs in the service
    process; progress callbacks run on the caller's loop thread; it completes whole."""
    url, data = slow
    seen: list[tuple[str, int, int]] = []

    async def main() -> Any:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        assert isinstance(d, BackgroundDownloader)
        op = d.create_download(url, tmp_path / "a.bin")
        assert op.status is S.IDLE
        here = threading.get_ident()

        def progress(op: RemoteOperation) -> None:
            assert threading.get_ident() == here
            seen.append((op.status.name, op.progress.bytes_received, os.getpid()))

        await op.start_async(progress)  # type: ignore[arg-type]
        return op

    op = asyncio.run(main())
    assert op.status is S.COMPLETED
    assert (tmp_path / "a.bin").read_bytes() == data
    assert seen[-1][:2] == ("COMPLETED", len(data))
    running = [b for status, b, _ in seen if status == "RUNNING"]
    assert running == sorted(running)
    assert len(running) >= 2  # ticks while it ran, not only the end
    assert svc.pid() not in (None, os.getpid())


def test_a_new_process_attaches_to_a_download_its_killed_starter_left(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """get_current_downloads_async in a new process finds the download a SIGKILLed
    client started; attach_async follows it to COMPLETED."""
    url, data = slow
    out = tmp_path / "b.bin"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "service_client_child.py"), str(svc.state_dir), url, str(out)],
        env={**os.environ},
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert child.stdout is not None
    guid = child.stdout.readline().strip()
    svc.wait_for(guid, 0.1)
    child.kill()
    child.wait()
    child.stdout.close()

    async def main() -> Any:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        ops = await d.get_current_downloads_async()
        assert [str(op.guid) for op in ops] == [guid]
        return await ops[0].attach_async()

    op = asyncio.run(main())
    assert op.status is S.COMPLETED
    assert out.read_bytes() == data


def test_pause_resume_and_cancel_act_in_the_service(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """pause() leaves it PAUSED_BY_APPLICATION in the service; resume() lets it
    complete; cancel() of another ends its wait with TransferCanceled, no partial data."""
    url, data = slow
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    op = d.create_download(url, tmp_path / "p.bin")
    op.start()
    svc.wait_for(str(op.guid), 0.1)
    op.pause()
    assert op.status is S.PAUSED_BY_APPLICATION
    assert svc.op(str(op.guid))["status"] == "PAUSED_BY_APPLICATION"
    time.sleep(0.3)
    paused_at = svc.op(str(op.guid))["bytes_received"]
    time.sleep(0.3)
    assert svc.op(str(op.guid))["bytes_received"] == paused_at
    op.resume()
    op.wait(120)
    assert (tmp_path / "p.bin").read_bytes() == data

    other = d.create_download(url, tmp_path / "q.bin")
    other.start()
    svc.wait_for(str(other.guid), 0.05)
    other.cancel()
    with pytest.raises(TransferCanceled):
        other.wait(60)
    assert not list(tmp_path.glob("q.bin*"))


def test_ranges_events_wait_for_the_handlers_deferral(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """ranges_downloaded: no event is raised while a deferral of the previous one is
    open; what arrived meanwhile comes coalesced in the next; together they cover the file."""
    url, data = slow
    events: list[list[tuple[int, int]]] = []
    open_deferrals = [0]
    overlapped = []

    async def main() -> None:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        op = d.create_download(url, tmp_path / "r.bin")
        loop = asyncio.get_running_loop()

        def handler(op: object, args: object) -> None:
            if open_deferrals[0]:
                overlapped.append(True)
            events.append([(r.offset, r.length) for r in args.added_ranges])  # type: ignore[attr-defined]
            deferral = args.get_deferral()  # type: ignore[attr-defined]
            open_deferrals[0] += 1

            def done() -> None:
                open_deferrals[0] -= 1
                deferral.complete()

            loop.call_later(0.4, done)

        op.ranges_downloaded.subscribe(handler)
        await op.start_async()
        while open_deferrals[0]:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a last event after the final deferral

    asyncio.run(main())
    assert not overlapped
    covered = sorted(r for e in events for r in e)
    merged: list[tuple[int, int]] = []
    for off, n in covered:
        if merged and off <= merged[-1][0] + merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], off + n - last[0]))
        else:
            merged.append((off, n))
    assert merged == [(0, len(data))]
    assert any(len(e) > 1 or e[0][1] > 1 << 20 for e in events)  # coalesced while deferred


def test_a_completion_group_fires_when_its_service_operations_end(
    svc: ServiceEnv, nginx: Nginx, tmp_path: Path
) -> None:
    """A completion group of operations in the service fires once all have ended."""

    async def main() -> list[Any]:
        group = BackgroundTransferCompletionGroup()
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True, completion_group=group)
        ops = [d.create_download(nginx.url("small.bin"), tmp_path / f"g{i}") for i in range(3)]
        group.enable()
        for op in ops:
            op.start()
        return await asyncio.wait_for(group.completed, 60)

    members = asyncio.run(main())
    assert len(members) == 3
    assert all(m.status is S.COMPLETED for m in members)


def test_credentials_cross_only_the_socket_and_are_asked_again_after_a_restart(
    svc: ServiceEnv, tmp_path: Path
) -> None:
    """A password reaches the service in a request body only (not its command line,
    environment, log or databases); after a kill -9 the operation waits paused for
    it, and completes once a client resumes it with the password."""
    body = os.urandom(12 << 20)
    server = FaultServer(body)
    server.auth = "alice:s3cret-pw"
    server.rate = 1 << 20
    try:
        out_file = tmp_path / "c.bin"
        out = svc.cli("get", "--background", server.url, "-o", str(out_file), "-u", server.auth)
        assert out.returncode == 0, out.stderr
        guid = out.stdout.strip()
        svc.wait_for(guid, 0.05)
        pid = svc.pid()
        assert pid is not None
        for name in ("cmdline", "environ"):
            assert b"s3cret-pw" not in Path(f"/proc/{pid}/{name}").read_bytes()
        os.kill(pid, signal.SIGKILL)
        while svc.pid() == pid:
            time.sleep(0.02)

        asyncio.run(_status(svc))  # a client without the password starts it again
        view = svc.op(guid)
        assert view["status"] == "PAUSED_BY_APPLICATION"
        assert view["waiting_for_credentials"] is True
        refused = svc.cli("resume", guid)  # no password: refused, still waiting
        assert refused.returncode == 2
        assert "credentials" in refused.stderr
        time.sleep(0.3)
        assert svc.op(guid)["status"] == "PAUSED_BY_APPLICATION"

        resumed = svc.cli("resume", guid, "-u", server.auth)
        assert resumed.returncode == 0, resumed.stderr
        assert out_file.read_bytes() == body
        assert "Basic YWxpY2U6czNjcmV0LXB3" in server.auth_seen  # libcurl probes first
        svc.stop()
        for path in svc.state_dir.iterdir():
            if path.is_file():
                assert b"s3cret-pw" not in path.read_bytes(), path
    finally:
        server.close()


async def _status(svc: ServiceEnv) -> None:
    client = ServiceClient(svc.state_dir)
    try:
        await client.status()
    finally:
        await client.close()


def test_a_result_stream_reads_the_file_the_service_writes_while_it_downloads(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """get_result_stream_at in the client: reads wait until the service has the bytes,
    and return the file's bytes, from before the end to after it."""
    url, data = slow
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    op = d.create_download(url, tmp_path / "s.bin")
    op.start()
    stream = op.get_result_stream_at(1000, timeout=60)
    got = bytearray()
    while chunk := stream.read(1 << 20):
        got += chunk
    assert bytes(got) == data[1000:]
    assert op.wait(60).status is S.COMPLETED
    after = op.get_result_stream_at(len(data) - 10)
    assert after.read(100) == data[-10:]


def test_a_random_access_stream_of_a_service_download_seeks_and_reads(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """is_random_access_required set through the service; its stream seeks near the end
    while the download runs and reads the right bytes there."""
    url, data = slow
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    op = d.create_download(url, tmp_path / "ra.bin")
    op.is_random_access_required = True
    assert svc.op(str(op.guid))["random_access"] is True
    op.start()
    stream = op.get_result_random_access_stream_reference(timeout=60)
    stream.seek(len(data) - 70000)
    assert stream.read(4096) == data[len(data) - 70000 : len(data) - 70000 + 4096]
    stream.seek(5)
    assert stream.read(10) == data[5:15]
    op.wait(60)


def test_request_headers_and_priority_set_through_the_service_reach_the_server(
    svc: ServiceEnv, tmp_path: Path
) -> None:
    """set_request_header/remove_request_header and priority on an operation in the
    service are kept there and sent with its requests."""
    body = os.urandom(1 << 20)
    server = FaultServer(body)
    server.record_headers = []
    try:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        d.set_request_header("X-From-Downloader", "a")
        op = d.create_download(server.url, tmp_path / "h.bin")
        op.set_request_header("X-Test", "1")
        op.set_request_header("X-Gone", "2")
        op.remove_request_header("x-gone")
        op.priority = BackgroundTransferPriority.HIGH
        assert svc.op(str(op.guid))["priority"] == "HIGH"
        op.start()
        op.wait(60)
        info = op.get_response_information()
        assert info is not None
        assert (info.status_code, info.actual_uri) in ((200, server.url), (206, server.url))
        sent = server.record_headers[0]
        assert sent.get("X-Test") == "1"
        assert sent.get("X-From-Downloader") == "a"
        assert "X-Gone" not in sent
    finally:
        server.close()


def test_a_client_that_cannot_open_the_result_reads_it_by_a_passed_descriptor(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """A client in a mount namespace where the result's folder is hidden (a tmpfs over
    it) reads the whole result by a descriptor the service passes over its socket."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the client its own mount namespace")
    url, data = slow
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    asyncio.run(_status(svc))  # started out here: it sees the real folder
    script = (
        f"mount -t tmpfs none {shlex.quote(str(hidden))} && exec {shlex.quote(sys.executable)} "
        f"{shlex.quote(str(HERE / 'service_stream_child.py'))} {shlex.quote(str(svc.state_dir))} "
        f"{shlex.quote(url)} {shlex.quote(str(hidden / 'x.bin'))}"
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", hashlib.sha256(data).hexdigest()]
    assert (hidden / "x.bin").read_bytes() == data


def test_transfer_groups_of_service_operations_are_found_by_group(
    svc: ServiceEnv, nginx: Nginx, tmp_path: Path
) -> None:
    """An operation created in a transfer group lives in the service with its group:
    get_current_downloads leaves it out (as in-process), the group's lookup finds it."""
    from engine import BackgroundTransferGroup

    group = BackgroundTransferGroup.create_group("svc-group", state_dir=svc.state_dir)
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True, transfer_group=group)
    plain = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    grouped = d.create_download(nginx.url("small.bin"), tmp_path / "g.bin")
    alone = plain.create_download(nginx.url("small.bin"), tmp_path / "a.bin")
    assert [str(op.guid) for op in plain.get_current_downloads()] == [str(alone.guid)]
    found = plain.get_current_downloads_for_transfer_group(group)
    assert [str(op.guid) for op in found] == [str(grouped.guid)]
    assert svc.op(str(grouped.guid))["group"] == "svc-group"
    for op in (grouped, alone):
        op.start()
        op.wait(60)


def test_async_handlers_of_service_operations_run_on_the_callers_loop(
    svc: ServiceEnv, slow: tuple[str, bytes], tmp_path: Path
) -> None:
    """An async def progress callback runs as a task; an async ranges handler holds
    the next range event until it returns, as in-process."""
    url, data = slow
    reports: list[int] = []
    busy = [0]
    overlapped: list[bool] = []
    covered: list[tuple[int, int]] = []

    async def main() -> None:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        op = d.create_download(url, tmp_path / "as.bin")

        async def progress(op: Any) -> None:
            await asyncio.sleep(0)
            reports.append(op.progress.bytes_received)

        async def ranges(op: Any, args: Any) -> None:
            if busy[0]:
                overlapped.append(True)
            busy[0] += 1
            covered.extend((r.offset, r.length) for r in args.added_ranges)
            await asyncio.sleep(0.3)
            busy[0] -= 1

        op.ranges_downloaded.subscribe(ranges)
        await op.start_async(progress)
        while sum(n for _, n in covered) < len(data):
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(main(), 120))
    assert reports
    assert reports[-1] == len(data)
    assert not overlapped
    assert sum(n for _, n in covered) == len(data)


def test_a_recoverable_status_pauses_a_service_operation_until_resumed(
    svc: ServiceEnv, tmp_path: Path
) -> None:
    """The operations are DownloadOperations; recoverable_web_error_statuses reaches
    the service: a 404 pauses instead of failing, and a resume after a new URI completes."""
    from engine import DownloadOperation, WebErrorStatus

    body = os.urandom(1 << 20)
    server = FaultServer(body, fault="404")
    try:
        d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
        op = d.create_download(server.url, tmp_path / "rc.bin")
        assert isinstance(op, DownloadOperation)
        op.recoverable_web_error_statuses.add(WebErrorStatus(404))
        op.start()
        deadline = time.monotonic() + 30
        while op.status is not S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS:
            assert time.monotonic() < deadline, op.status
            time.sleep(0.05)
        assert op.current_web_error_status == WebErrorStatus(404)
        server.fault = ""
        op.requested_uri = server.url + "?fresh"
        op.resume()
        op.wait(60)
        assert (tmp_path / "rc.bin").read_bytes() == body
    finally:
        server.close()
