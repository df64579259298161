"""A small HTTP/1.1 server on 127.0.0.1 that serves bytes with Range support.

``bgtransfer demo`` serves a generated file with it, so a first-time user sees a real
download with no URL at hand.  It honours single ranges, HEAD, ETag, Last-Modified
and If-Range as nginx does; the tests subclass its handler to inject faults.
"""

from __future__ import annotations

import http.server
import re
import sys
import threading
from email.utils import formatdate

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.body`` at every path."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo prints its own progress."""

    def do_HEAD(self) -> None:
        self.respond(send_body=False)

    def do_GET(self) -> None:
        self.respond(send_body=True)

    def wanted_range(self, size: int) -> tuple[int, int] | bool | None:
        """(first, last) asked for; None for the whole body; False when unsatisfiable."""
        header = self.headers.get("Range")
        if not header:
            return None
        if_range = self.headers.get("If-Range")
        if if_range and if_range not in (self.etag, self.server.last_modified):
            return None
        m = _RANGE.match(header.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            return None
        if not m.group(1):
            first, last = max(0, size - int(m.group(2))), size - 1
        else:
            first = int(m.group(1))
            last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if first >= size or first > last:
            return False
        return first, last

    body = b""
    """The content this response sends, with its ``etag``: taken together when the
    request comes (``version``), so a body the server replaces meanwhile is not sent
    under the old validator."""
    etag = ""

    def version(self) -> tuple[bytes, str]:
        return self.server.body, self.server.etag

    def respond(self, send_body: bool) -> None:
        body, self.etag = self.version()
        self.body = body
        size = len(body)
        rng = self.wanted_range(size)
        if rng is False:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(rng, tuple):
            first, last = rng
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            first, last = 0, size - 1
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self.etag)
        self.send_header("Last-Modified", self.server.last_modified)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if send_body:
            self.send_body(first, last)

    def send_body(self, first: int, last: int) -> None:
        view = memoryview(self.body)
        try:
            for off in range(first, last + 1, 1 << 20):
                self.wfile.write(view[off : min(off + (1 << 20), last + 1)])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threaded server on an ephemeral loopback port, stopped with ``close()``."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        body: bytes,
        handler: type[RangeHandler] = RangeHandler,
        etag: str = '"bgtransfer-demo-1"',
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.body = body
        self.etag = etag
        self.last_modified = formatdate(usegmt=True)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up on a kept-alive connection is not an error worth a trace."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/file.bin"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
