"""Fuzzing the response parser against the tests' own fault server: whatever lies a
server tells about statuses, lengths, ranges and validators, a download ends
byte-exact or in a typed TransferError, never with a complete-looking wrong file.

Each scripted response sends only the true bytes of the range it claims: a claim
the parser accepts puts right bytes in place, so a wrong file could only come from
a claim it should have refused.  (A 204, a whole 200 body declared shorter, one that
ends with its connection, or a range of unknown total cut short, is another file as
far as anyone can tell: those are not lies a client could catch.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import FaultHandler, FaultServer

from engine import BackgroundDownloader, DownloadOperation, TransferConfig, TransferError

BODY = os.urandom(600_000)
CONFIG = TransferConfig(
    poll_interval=0.05,
    backoff_base=0.01,
    backoff_max=0.02,
    retries=2,
    block_size=1 << 16,
    first_request=128 << 10,
    min_split=64 << 10,
    response_timeout=2,
    connect_timeout=5,
)


@dataclasses.dataclass(frozen=True)
class Lie:
    """One scripted response."""

    status: int
    shift: int  # the claimed first byte, from the one asked for
    stretch: int  # the claimed last byte, from the one asked for
    total: int | None  # the claimed complete length, from the true one (None: "*")
    length: str  # Content-Length: exact, missing, more, less
    cut: int | None  # bytes of the body sent before the connection closes
    etag: str


lies = st.builds(
    Lie,
    status=st.sampled_from([200, 206, 206, 206, 416, 500]),
    shift=st.sampled_from([0, 0, 1, -1, 4096, -65536]),
    stretch=st.sampled_from([0, 0, 1, -1, 4 << 20, -4096]),
    total=st.sampled_from([0, 0, 1, -1, 1 << 20, None]),
    length=st.sampled_from(["exact", "exact", "missing", "more", "less"]),
    cut=st.one_of(st.none(), st.integers(0, 200_000)),
    etag=st.sampled_from(['"v1"', '"v1"', '"v2"', ""]),
)


def answer(h: FaultHandler, lie: Lie, send_body: bool) -> None:
    """Write ``lie`` as the response to the request ``h`` holds."""
    size = len(BODY)
    wanted = h.wanted_range(size)
    first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
    head = [f"HTTP/1.1 {lie.status} X"]
    data = b""
    if lie.status == 416:
        total = "*" if lie.total is None else str(size + lie.total)
        head.append(f"Content-Range: bytes */{total}")
    elif lie.status in (200, 206):
        claimed_first = max(0, first + lie.shift) if lie.status == 206 else 0
        stretch = lie.stretch
        if lie.total is None and stretch < 0:
            stretch = 0  # a range cut short of an unknown length: it ends there (RFC 9110)
        claimed_last = max(claimed_first, last + stretch) if lie.status == 206 else size - 1
        data = BODY[claimed_first : claimed_last + 1]  # the true bytes, as far as they go
        if lie.status == 206:
            total = "*" if lie.total is None else str(size + lie.total)
            head.append(f"Content-Range: bytes {claimed_first}-{claimed_last}/{total}")
        head.append("Accept-Ranges: bytes")
    if lie.etag:
        head.append(f"ETag: {lie.etag}")
    length = {"exact": len(data), "more": len(data) + 100, "less": max(0, len(data) - 100)}
    if lie.status == 200 and lie.length == "less":
        # a whole body declared shorter is another, shorter file: nothing can tell
        length["less"] = len(data)
    if lie.length in length:
        head.append(f"Content-Length: {length[lie.length]}")
    head.append("Connection: close")
    cut = lie.cut
    if lie.status == 200 and lie.length == "missing":
        cut = None  # a body that ends with the connection: a cut is its end, for anyone
    h.close_connection = True
    with contextlib.suppress(OSError):  # the client may have gone: its own business
        h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if send_body:
            h.wfile.write(data[:cut] if cut is not None else data)
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer(BODY)
    try:
        yield srv
    finally:
        srv.close()


_runs = itertools.count()


def _scripted(
    server: FaultServer, state: Path, result: Path, script: list[Lie]
) -> DownloadOperation:
    """A download of ``server.url`` whose first responses are ``script``'s lies."""
    left = list(script)

    def respond(h: FaultHandler, send_body: bool) -> bool:
        with server.lock:
            lie = left.pop(0) if left else None
        if lie is None:
            return False
        answer(h, lie, send_body)
        return True

    server.script = respond
    d = BackgroundDownloader(
        state_dir=state, config=CONFIG, block_size=1 << 16, max_connections_per_file=2
    )
    return d.create_download(server.url, result)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=st.lists(lies, max_size=4))
def test_any_lie_ends_byte_exact_or_in_a_typed_error(
    server: FaultServer, tmp_path: Path, script: list[Lie]
) -> None:
    """The scripted lies come first, then true answers: the download is byte-exact,
    or it failed with a TransferError and left no file under the result's name."""
    run = next(_runs)
    result = tmp_path / f"out-{run}.bin"
    # one state directory for every example (each has its own result file): the engine
    # keeps a state directory's database open for the process's life, four descriptors
    # an example, which hundreds of examples would leave to the tests that follow
    op = _scripted(server, tmp_path / "state", result, script)
    try:
        op.start().wait(60)
    except TransferError:
        assert not result.exists()
    else:
        assert result.read_bytes() == BODY
    finally:
        server.script = None


def test_a_416_of_another_version_is_a_change_not_the_end_of_the_body(
    server: FaultServer, tmp_path: Path
) -> None:
    """A body of unknown length, then a 416 with another ETag where it was to go on:
    the file changed, so the download starts over and ends byte-exact, never as the
    first version's part under the result's name."""
    script = [
        Lie(status=206, shift=0, stretch=0, total=None, length="missing", cut=None, etag='"v1"'),
        Lie(status=416, shift=0, stretch=0, total=None, length="missing", cut=None, etag='"v2"'),
    ]
    op = _scripted(server, tmp_path / "state", tmp_path / "out.bin", script)
    try:
        op.start().wait(60)
    finally:
        server.script = None
    assert (tmp_path / "out.bin").read_bytes() == BODY
    assert op.progress.has_restarted
