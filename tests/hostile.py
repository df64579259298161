"""Servers that misbehave on purpose, for the hardening tests: silence, a stall on one
path while others serve, and raw responses written byte by byte as a test says."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable


class SilentServer:
    """Listens on loopback and never answers: the kernel completes each connection
    (the backlog), and no byte ever comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/file.bin"

    def close(self) -> None:
        self.sock.close()


Respond = Callable[[str, dict[str, str], socket.socket], None]
"""Answers one request: (path, headers with lower-case names, the connection)."""


class RawServer:
    """A threaded HTTP/1.1 server whose answers a function writes as raw bytes, so a
    test can send what no well-behaved server would; it counts requests by path."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this server context (its ALPN decides HTTP/1.1)."""
        self.respond = respond
        self.tls = tls
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.lock = threading.Lock()
        self.seen: list[str] = []
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "file.bin") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}/{path}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                path = line.split()[1].decode()
                headers = {}
                while (h := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                with self.lock:
                    self.seen.append(path)
                self.respond(path, headers, conn)
        except (OSError, IndexError):
            return
        finally:
            reader.close()
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def ok(conn: socket.socket, body: bytes, extra: str = "") -> None:
    """A plain 200 with a Content-Length (kept alive)."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


def stall_after(conn: socket.socket, body: bytes, sent: int, seconds: float) -> None:
    """Headers for the whole body, ``sent`` bytes of it, then nothing for ``seconds``."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
    time.sleep(seconds)


def ranged(
    conn: socket.socket, headers: dict[str, str], body: bytes, piece: int = 0, every: float = 0
) -> None:
    """Serve ``body`` honouring one ``Range`` (206) or whole (200); with ``piece``, only
    ``piece`` bytes every ``every`` seconds (a trickle), until the client hangs up."""
    first, last = 0, len(body) - 1
    status = "200 OK"
    extra = ""
    wanted = headers.get("range", "")
    if wanted.startswith("bytes="):
        a, _, b = wanted[6:].partition("-")
        first = int(a or 0)
        last = min(int(b), last) if b else last
        status = "206 Partial Content"
        extra = f"Content-Range: bytes {first}-{last}/{len(body)}\r\n"
    conn.sendall(
        f'HTTP/1.1 {status}\r\nAccept-Ranges: bytes\r\nETag: "t"\r\n{extra}'
        f"Content-Length: {last - first + 1}\r\n\r\n".encode()
    )
    view = memoryview(body)[first : last + 1]
    if not piece:
        conn.sendall(view)
        return
    for off in range(0, len(view), piece):
        conn.sendall(view[off : off + piece])
        time.sleep(every)
