"""The multi handle's parked readers: idle connections reused, closed by the server,
or closed by libcurl without a word, and never a descriptor left watched or open."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycurl
import pytest
import uvloop
from servers import Nginx

from engine._download.segmented import SegmentedDownload
from engine._net import multi as _multi
from engine._net.multi import Multi


class KeptAliveServer:
    """Keeps each connection alive for the next request, answering each ``delay``
    seconds after it arrives, and closes a connection idle for ``idle`` seconds
    without saying so (no ``Connection: close``): the way a server's idle timeout
    ends a connection libcurl keeps in its pool.  The delay makes libcurl watch the
    socket for the answer: one that is already there when the request has gone out
    is read in the same pass, and the socket is never watched at all."""

    def __init__(self, body: bytes, idle: float, delay: float = 0.005) -> None:
        self.body, self.idle, self.delay = body, idle, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
        with conn:
            conn.settimeout(self.idle)
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    try:
                        chunk = conn.recv(4096)
                    except TimeoutError:
                        return  # idle too long: closed
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                time.sleep(self.delay)
                conn.sendall(head + self.body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def closing() -> Iterator[KeptAliveServer]:
    """Connections closed by the server after 50 ms idle."""
    server = KeptAliveServer(b"c" * 5000, idle=0.05)
    yield server
    server.close()


@pytest.fixture
def kept() -> Iterator[KeptAliveServer]:
    """Connections kept for a minute."""
    server = KeptAliveServer(b"k" * 10240, idle=60.0)
    yield server
    server.close()


def _client_sockets(*ports: int) -> set[str]:
    """Inodes of this process's open TCP sockets connected to one of ``ports`` (the
    servers' own sockets, in this process too, are not among them)."""
    mine = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(link[8:-1])
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, inode = int(fields[2].split(":")[1], 16), fields[9]
        if remote_port in ports and inode in mine:
            found.add(inode)
    return found


def _parked_sockets(multi: Multi) -> list[int]:
    """Parked watches of sockets (libcurl parks its own eventfd between transfers too)."""
    return [
        fd
        for fd, w in multi._parked.items()
        if os.readlink(f"/proc/self/fd/{w.dup}").startswith("socket:")
    ]


async def _get(multi: Multi, curl: Any, url: str) -> bytes:
    body = bytearray()
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.WRITEFUNCTION, body.extend)
    await asyncio.wait_for(multi.perform(curl), 10)  # a lost reader would hang here
    assert curl.getinfo(pycurl.RESPONSE_CODE) == 200
    return bytes(body)


def _run(main: Any) -> Any:
    return uvloop.run(main)


def test_connections_are_reused_with_their_readers_parked(kept: KeptAliveServer) -> None:
    """Sequential requests reuse one connection: its reader is parked between them,
    taken up again, and let go PARK_FOR after the last."""

    async def main() -> None:
        multi, curl = Multi(), pycurl.Curl()
        for _ in range(50):
            assert await _get(multi, curl, kept.url) == kept.body
        assert curl.getinfo(pycurl.NUM_CONNECTS) == 0  # the last one was reused
        assert len(_parked_sockets(multi)) == 1
        await asyncio.sleep(_multi.PARK_FOR + 0.5)
        assert not multi._parked
        await multi.aclose()
        curl.close()

    _run(main())


def test_a_stale_readiness_event_does_not_unpark_an_idle_connection(
    kept: KeptAliveServer,
) -> None:
    """The loop may hand over an event it gathered before the park, for bytes libcurl
    has read since: the idle connection has nothing to read, so it stays parked, and
    the next request reuses it on the same duplicate."""

    async def main() -> None:
        multi, curl = Multi(), pycurl.Curl()
        assert await _get(multi, curl, kept.url) == kept.body
        (fd,) = _parked_sockets(multi)
        watch = multi._parked[fd]
        multi._readable(fd, watch)  # what a stale event runs
        assert multi._parked.get(fd) is watch
        assert await _get(multi, curl, kept.url) == kept.body
        assert curl.getinfo(pycurl.NUM_CONNECTS) == 0
        assert multi._parked.get(fd) is watch  # the same duplicate, parked again
        await multi.aclose()
        curl.close()

    _run(main())


def test_a_connection_the_server_closes_while_idle(closing: KeptAliveServer) -> None:
    """The server ends each idle connection: the parked duplicate sees it and is let go
    at once, and the next request (libcurl finds the connection dead) gets a new one."""

    async def main() -> None:
        multi, curl = Multi(), pycurl.Curl()
        for i in range(10):
            assert await _get(multi, curl, closing.url) == closing.body
            await asyncio.sleep(0.2)  # the server has closed the connection by now
            assert not _parked_sockets(multi), f"request {i}: a closed connection stayed parked"
        await multi.aclose()
        curl.close()

    _run(main())
    assert closing.connections == 10


def test_a_closed_loops_connections_are_let_go(kept: KeptAliveServer, tmp_path: Path) -> None:
    """Downloads run on a loop of the caller's (not the engine's): once that loop is
    closed, the next loop's first download closes the old loop's kept-alive
    connection and its duplicate (each loop kept six descriptors for the life of the
    process: the test suite neared the 1024 that select takes)."""
    port = int(kept.url.split(":")[2].split("/")[0])

    async def fetch(name: str) -> None:
        await SegmentedDownload(kept.url, tmp_path / name).run()
        assert (tmp_path / name).read_bytes() == kept.body

    before = _client_sockets(port)
    asyncio.run(fetch("first"))
    first = _client_sockets(port) - before
    assert len(first) == 1  # kept alive in the closed loop's multi
    uvloop.run(fetch("second"))
    now = _client_sockets(port) - before
    assert len(now) == 1
    assert not now & first  # the first loop's connection is gone


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Every descriptor below 1100 taken: new sockets get numbers that ``select``
    refuses (FD_SETSIZE is 1024), as in a process with many files open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("high_descriptors")
def test_parked_connections_past_descriptor_1023(
    kept: KeptAliveServer, closing: KeptAliveServer
) -> None:
    """A parked connection whose duplicate is numbered past 1023: a stale event still
    leaves it parked, and a server's close still lets it go (select raised
    ValueError there, in the loop's callback, and the closed connection stayed)."""

    async def main() -> None:
        multi, curl = Multi(), pycurl.Curl()
        assert await _get(multi, curl, kept.url) == kept.body
        (fd,) = _parked_sockets(multi)
        watch = multi._parked[fd]
        assert watch.dup > 1023
        multi._readable(fd, watch)  # a stale event: nothing to read
        assert multi._parked.get(fd) is watch
        assert await _get(multi, curl, closing.url) == closing.body
        await asyncio.sleep(0.2)  # the server has closed that connection by now
        assert _parked_sockets(multi) == [fd]  # the kept one only
        await multi.aclose()
        curl.close()

    _run(main())


def test_connections_libcurl_closes_itself(
    nginx: Nginx, closing: KeptAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection in all: each request to the other server makes libcurl close the
    idle connection without a socket callback, and the new socket often gets the same
    descriptor number.  Every request completes, and once the parked readers are let
    go, no socket is open beyond the one libcurl keeps."""
    monkeypatch.setattr(_multi, "PARK_FOR", 0.3)
    closing.idle = 5.0  # the server keeps them: only libcurl closes connections here
    expected = (nginx.www / "small.bin").read_bytes()
    ports = (nginx.port, int(closing.url.split(":")[2].split("/")[0]))
    before = _client_sockets(*ports)  # the engine's own pool, from earlier tests

    async def main() -> None:
        multi = Multi()
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, 1)
        multi.setopt(pycurl.M_MAXCONNECTS, 1)
        curl = pycurl.Curl()
        for i in range(40):
            if i % 2:
                assert await _get(multi, curl, closing.url) == closing.body
            else:
                assert await _get(multi, curl, nginx.url("small.bin")) == expected
        await asyncio.sleep(1.0)
        assert not multi._parked
        new = _client_sockets(*ports) - before
        assert len(new) <= 1  # libcurl's pooled connection, and no duplicate
        await multi.aclose()
        curl.close()

    _run(main())
    assert closing.connections == 20
