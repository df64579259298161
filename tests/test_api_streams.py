"""Reading the result while it downloads: streams, random access, read-driven fetching."""

from __future__ import annotations

import asyncio
import io
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer, sha256

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    InvalidStateError,
    TransferCanceled,
    TransferTimeoutError,
)
from engine._disk.core import control_path

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
MIB = 1 << 20


def test_stream_from_a_position_reads_the_source_while_it_downloads(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """get_result_stream_at(p) yields body[p:], reads waiting for bytes not yet there."""
    fault_server.rate = 4 * MIB
    op = make_downloader(max_connections_per_file=2).create_download(
        fault_server.url, tmp_path / "s"
    )
    op.start()
    with op.get_result_stream_at(3 * MIB + 17, timeout=30) as stream:
        assert not stream.seekable()
        with pytest.raises(io.UnsupportedOperation):
            stream.seek(0)
        first = stream.read(100)
        assert op.status is S.RUNNING  # read before the download ended
        rest = stream.read()
    assert first + rest == body[3 * MIB + 17 :]
    op.wait(30)


def test_random_reads_pull_their_offsets_forward(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Random 64 KiB reads while a slow download runs: right bytes, and each far offset
    was asked of the server as the start of a range (fetched out of order for the reader)."""
    fault_server.rate = MIB // 2
    op = make_downloader(max_connections_per_file=2).create_download(
        fault_server.url, tmp_path / "r"
    )
    op.is_random_access_required = True
    op.start()
    rng = random.Random(5)
    offsets = [rng.randrange(0, len(body) - 65536) for _ in range(6)]
    with op.get_result_random_access_stream_reference(timeout=30) as stream:
        assert stream.seekable()
        for off in offsets:
            stream.seek(off)
            assert stream.tell() == off
            data = b""
            while len(data) < 65536:
                data += stream.read(65536 - len(data))
            assert data == body[off : off + 65536]
    starts = {int(r.split("=")[1].split("-")[0]) for r in fault_server.ranges_seen if r}
    block = 1 << 16
    pulled = [off for off in offsets if off - off % block in starts]
    assert pulled, f"no read was fetched out of order: {sorted(starts)}"
    op.cancel()


def test_streams_across_pause_and_resume(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Paused: present bytes read at once, missing ones time out; resumed: all arrive."""
    fault_server.rate = 2 * MIB
    op = make_downloader(max_connections_per_file=1).create_download(
        fault_server.url, tmp_path / "p"
    )
    op.start()
    wait_for(lambda: op.progress.bytes_received >= MIB)
    op.pause()
    time.sleep(0.2)
    stream = op.get_result_stream_at(0, timeout=0.3)
    assert stream.read(MIB) == body[:MIB]
    late = op.get_result_stream_at(len(body) - 10, timeout=0.3)
    with pytest.raises(TransferTimeoutError):
        late.read(10)
    fault_server.rate = 0
    op.resume()
    late.timeout = 30
    assert late.read(10) == body[-10:]
    op.wait(30)
    assert stream.read() == body[MIB:]  # the final file now


def test_a_cancelled_download_fails_a_waiting_read(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """A read blocked on missing bytes raises TransferCanceled when the operation is cancelled."""
    fault_server.rate = MIB // 4
    op = make_downloader(max_connections_per_file=1).create_download(
        fault_server.url, tmp_path / "c"
    )
    op.start()
    stream = op.get_result_stream_at(7 * MIB, timeout=30)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            stream.read(10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    op.cancel()
    thread.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], TransferCanceled)


def test_random_access_reference_needs_the_flag_and_can_cancel_a_read(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """Without is_random_access_required: InvalidStateError; cancel_pending_read interrupts."""
    d = make_downloader(max_connections_per_file=1)
    plain = d.create_download(fault_server.url, tmp_path / "a")
    with pytest.raises(InvalidStateError):
        plain.get_result_random_access_stream_reference()
    op = d.create_download(fault_server.url, tmp_path / "b")
    op.is_random_access_required = True
    stream = op.get_result_random_access_stream_reference(timeout=30)  # before start: fine
    assert stream.size == 0  # unknown before the first response
    with pytest.raises(ValueError, match="negative"):
        stream.seek(-10, io.SEEK_END)
    stream.seek(6 * MIB)  # not started: this read can only wait
    caught: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: caught.append(_read_error(stream)))
    thread.start()
    wait_for(lambda: stream._pending is not None)  # the read is parked in the engine
    stream.cancel_pending_read()
    thread.join(10)
    assert isinstance(caught[0], InterruptedError)
    op.cancel()


def _read_error(stream: io.RawIOBase) -> BaseException | None:
    try:
        stream.read(10)
    except BaseException as exc:
        return exc
    return None


def test_async_reads(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """read_async: the asyncio counterpart, same bytes."""
    fault_server.rate = 4 * MIB
    op = make_downloader().create_download(fault_server.url, tmp_path / "x")

    async def go() -> bytes:
        op.start()
        stream = op.get_result_stream_at(MIB)
        out = b""
        while len(out) < 2 * MIB:
            out += await stream.read_async(2 * MIB - len(out))
        return out

    assert asyncio.run(go()) == body[MIB : 3 * MIB]
    op.wait(30)


def test_streams_across_a_reattach_in_a_new_process(tmp_path: Path) -> None:
    """A download killed in its process, re-attached here: the stream reads it all."""
    body = random.Random(3).randbytes(6 * MIB)
    server = FaultServer(body)
    server.rate = MIB
    state, result = tmp_path / "state", tmp_path / "out.bin"
    child = Path(__file__).with_name("attach_child.py")
    with (tmp_path / "child.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(child), str(state), "create", server.url, str(result)],
            stdout=log,
            stderr=log,
        )
    try:
        wait_for(lambda: control_path(result).exists())
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.rate = 0
        (op,) = BackgroundDownloader(state_dir=state).get_current_downloads()
        stream = op.get_result_stream_at(0, timeout=30)
        head = stream.read(1024)  # present from the killed run, or waits for the attach
        threading.Thread(target=lambda: asyncio.run(op.attach_async())).start()
        assert head + stream.read() == body
        op.wait(30)
        assert sha256(result) == sha256(body)
    finally:
        server.close()


def test_several_readers_at_once_are_each_served(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """Four threads, each with its own random access stream, read at far apart offsets
    while a slow download runs: every read gets the right bytes, none waits for the end."""
    fault_server.rate = MIB // 4
    op = make_downloader(max_connections_per_file=2).create_download(
        fault_server.url, tmp_path / "m"
    )
    op.is_random_access_required = True
    op.start()
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            with op.get_result_random_access_stream_reference(timeout=30) as stream:
                stream.seek(offset)
                data = b""
                while len(data) < 65536:
                    data += stream.read(65536 - len(data))
                results[offset] = data
        except BaseException as exc:
            errors.append(exc)

    offsets = [MIB + 123, 3 * MIB + 7, 5 * MIB + 99, 7 * MIB + 1]
    threads = [threading.Thread(target=reader, args=(off,)) for off in offsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert op.status is S.RUNNING  # the reads were served long before the end
    for off in offsets:
        assert results[off] == body[off : off + 65536]
    op.cancel()
