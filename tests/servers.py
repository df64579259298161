"""Real servers on 127.0.0.1 for the tests: nginx, and a fault-injecting server we own."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from engine._net.loopback import LoopbackServer, RangeHandler

NGINX_CONF = """
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    sendfile on;
    keepalive_requests 100000;
    log_format proto '$request $status $server_protocol c$connection $http_accept_encoding';
    access_log {root}/proto.log proto;
    log_format timed '$msec $status $body_bytes_sent $request_uri';
    access_log {root}/timed.log timed;
    {tls}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location /slow/ {{ alias {root}/www/; limit_rate 2m; }}
        location /r20/ {{ alias {root}/www/; limit_rate 20m; }}
        location /gz/ {{ alias {root}/www/; gzip on; gzip_types *; gzip_min_length 1; }}
    }}
}}
"""


def sha256(data: bytes | Path) -> str:
    """Hex SHA-256 of bytes or of a file's content."""
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx serving ``root/www`` on an ephemeral loopback port."""

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, key) to also serve HTTPS with HTTP/2 on ``tls_port``."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
        self.root = root
        self.www = root / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        tls_block = (
            f"server {{ listen 127.0.0.1:{self.tls_port} ssl http2; root {root}/www; "
            f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; "
            f"location /to-http/ {{ return 302 http://127.0.0.1:{self.port}/small.bin; }} }}"
            if tls
            else ""
        )
        conf = root / "nginx.conf"
        # As root, workers would drop to nobody and could not read pytest's 0700 temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(root=root, port=self.port, user=user, tls=tls_block))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not start: {(root / 'error.log').read_text()}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def tls_url(self, name: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.tls_port}/{name}"

    def protocols(self) -> list[str]:
        """'$request $status $server_protocol c$connection $http_accept_encoding' per request."""
        return (self.root / "proto.log").read_text().splitlines()

    def requests(self) -> list[str]:
        return (self.root / "access.log").read_text().splitlines()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


BODY_FAULTS = frozenset({"reset", "truncate", "stall", "change"})


class FaultHandler(RangeHandler):
    """Serves like RangeHandler, then misbehaves as ``server.fault`` says.

    ``fault`` may join modes with ``+``: ``no-ranges+reset`` ignores Range and resets.
    """

    server: FaultServer

    def do_POST(self) -> None:
        """Echo the request body back (``post_seen`` keeps what came).  With the fault
        ``post-307`` the first POST is sent on to ``server.location`` by a 307, which
        asks the client to send the same body again."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with self.server.lock:
            self.server.post_seen.append(body)
            first = len(self.server.post_seen) == 1
        if first and "post-307" in self.server.fault.split("+"):
            self.send_response(307)
            self.send_header("Location", self.server.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self._authorized():
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        """With ``server.auth`` set, only that Basic credential gets the body; else 401."""
        srv = self.server
        got = self.headers.get("Authorization")
        with srv.lock:
            srv.auth_seen.append(got)
        if srv.auth is None or got == "Basic " + base64.b64encode(srv.auth.encode()).decode():
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="t"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def respond(self, send_body: bool) -> None:
        srv = self.server
        with srv.lock:
            self.body, self.etag = srv.body, srv.etag  # one version for this response
            srv.versions.append(self.etag)
            srv.requests += 1
            n = srv.requests
            srv.ranges_seen.append(self.headers.get("Range"))
            srv.peers.add(self.client_address)
            if srv.record_headers is not None:
                srv.record_headers.append(dict(self.headers))
        if not self._authorized():
            return
        if srv.script is not None and srv.script(self, send_body):
            return
        modes = set(srv.fault.split("+"))
        for busy in (503, 429):
            if f"{busy}-once" in modes and n == 1:
                self.send_response(busy)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if "503" in modes:  # busy for ever
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "404" in modes:
            self.send_error(404)
            return
        if "redirect" in modes or "redirect-loop" in modes:
            self.send_response(302)
            self.send_header("Location", srv.location if "redirect" in modes else self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "garbage" in modes:
            self.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            self.close_connection = True
            return
        if "no-ranges" in modes:
            del self.headers["Range"]
        if "no-length" in modes:
            self.send_response(200)
            self.send_header("ETag", self.etag)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if send_body:
                self.send_body(0, len(srv.body) - 1)
            return
        if "gzip" in modes:  # claims an encoding: a client must store the bytes as sent
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(srv.body)))
            self.end_headers()
            if send_body:
                self.send_body(0, len(srv.body) - 1)
            return
        if "unknown-total" in modes and self.unknown_total(send_body):
            return
        if "wrong-range" in modes and self.headers.get("Range"):
            self.send_response(206)
            size = len(srv.body)
            self.send_header("Content-Range", f"bytes 1-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - 1))
            self.end_headers()
            self.send_body(1, size - 1)
            return
        super().respond(send_body)

    def unknown_total(self, send_body: bool) -> bool:
        """Ranges as RFC 9110 allows for a length the server does not know: ``206`` with
        ``Content-Range: bytes a-b/*``, and ``416`` with ``bytes */*`` past the end.
        False when the request gets the whole body (no Range, or If-Range differs)."""
        size = len(self.server.body)
        rng = self.wanted_range(size)
        if rng is None:
            return False
        if not isinstance(rng, tuple):  # unsatisfiable
            self.send_response(416)
            self.send_header("Content-Range", "bytes */*")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        first, last = rng
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/*")
        self.send_header("ETag", self.etag)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        if send_body:
            self.send_body(first, last)
        return True

    def version(self) -> tuple[bytes, str]:
        """The version ``respond`` took when the request came."""
        return self.body, self.etag

    def _slow_from(self, modes: set[str], last: int) -> int:
        """``slow-tail``: the first connection that asks for bytes past ``slow_from``
        gets every such byte at ``slow_rate`` (the others at full speed); from where
        its bytes are slow, else past the end."""
        srv = self.server
        if "slow-tail" not in modes or last < srv.slow_from:
            return 1 << 62
        with srv.lock:
            if srv.slow_connection is None:
                srv.slow_connection = self.connection
        return srv.slow_from if srv.slow_connection is self.connection else 1 << 62

    def send_body(self, first: int, last: int) -> None:
        srv = self.server
        view = memoryview(self.body)
        with srv.lock:
            modes = set(srv.fault.split("+"))
            fault_here = bool(modes & BODY_FAULTS) and srv.faults_left > 0
            if fault_here:
                srv.faults_left -= 1
        limit = last + 1
        if fault_here:
            limit = min(limit, first + srv.fault_after)
        off = first
        started = time.monotonic()
        slow = self._slow_from(modes, last)
        piece = 16384 if slow < limit else 65536
        try:
            while off < limit:
                chunk = view[off : min(off + piece, limit)]
                self.wfile.write(chunk)
                with srv.lock:
                    srv.bytes_sent += len(chunk)
                off += len(chunk)
                if srv.rate:  # bytes per second per connection
                    ahead = (off - first) / srv.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if off > slow:  # this connection's bytes past ``slow_from``: a trickle
                    time.sleep(len(chunk) / srv.slow_rate)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if not fault_here:
            return
        if "stall" in modes:
            time.sleep(srv.stall_seconds)
        elif "reset" in modes:
            # Close at once with linger 0: an RST and no FIN, which socketserver's own
            # shutdown(SHUT_WR) would send first (a clean end of a close-delimited body).
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()
        elif "change" in modes:
            with srv.lock:
                srv.body, srv.etag = srv.new_body, '"v2"'
        self.close_connection = True


class FaultServer(LoopbackServer):
    """The tests' own server: counts requests and body bytes, injects one fault kind."""

    def __init__(self, body: bytes, fault: str = "", faults: int = 1, after: int = 1 << 20):
        super().__init__(body, FaultHandler, etag='"v1"')
        self.lock = threading.Lock()
        self.fault = fault
        self.faults_left = faults
        self.fault_after = after
        self.stall_seconds = 3.0
        self.requests = 0
        self.bytes_sent = 0
        self.ranges_seen: list[str | None] = []
        self.peers: set[object] = set()
        self.versions: list[str] = []
        """The ETag of each response, as the request came."""
        """The client addresses (connections) requests came from."""
        self.new_body = b""
        self.rate = 0
        self.slow_from = 0
        self.slow_rate = 100_000
        self.slow_connection: object = None
        self.auth: str | None = None
        self.auth_seen: list[str | None] = []
        self.post_seen: list[bytes] = []
        self.record_headers: list[dict[str, str]] | None = None
        self.location = ""
        self.script: Callable[[FaultHandler, bool], bool] | None = None
        """Answers a request itself when it returns True (the fuzz tests' responses)."""


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A forward HTTP proxy: absolute-URI requests are relayed to their origin."""

    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        srv = self.server
        got = self.headers.get("Proxy-Authorization")
        expected = (
            None if srv.auth is None else "Basic " + base64.b64encode(srv.auth.encode()).decode()
        )
        if expected is not None and got != expected:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = urllib.parse.urlsplit(self.path)
        with srv.lock:
            srv.relayed.append(self.path)
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        try:  # closed even when the client hangs up mid-body (a leaked socket fails a test)
            headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-")}
            conn.request("GET", target.path or "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            conn.close()


class ProxyServer(http.server.ThreadingHTTPServer):
    """The forward proxy on an ephemeral loopback port; ``auth`` asks for a credential."""

    daemon_threads = True

    def __init__(self, auth: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.auth = auth
        self.lock = threading.Lock()
        self.relayed: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class FtpServer:
    """pyftpdlib on loopback serving ``root`` (in a child process: pyftpdlib keeps global
    ioloop state that one server's shutdown breaks for the next): anonymous read, and
    user ``u`` / ``p``.  ``rate`` limits each data connection (bytes per second);
    ``rests`` are the REST offsets asked for (ranged or resumed transfers).
    """

    def __init__(self, root: Path, rate: int = 0) -> None:
        self._log = root.parent / f"ftp-rests-{id(self)}.log"
        script = Path(__file__).with_name("ftp_server.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(rate), str(self._log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())

    @property
    def rests(self) -> list[int]:
        try:
            return [int(x) for x in self._log.read_text().split()]
        except FileNotFoundError:
            return []

    def url(self, name: str, user: str = "") -> str:
        return f"ftp://{user + '@' if user else ''}127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class SshServer:
    """OpenSSH's sshd on a loopback port, for SFTP: key login as the current user.

    ``known_hosts`` lists its host key and ``client_key`` logs in; skip the test
    when no sshd is installed (``.ci/run`` installs openssh-server).
    """

    def __init__(self, root: Path) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            raise FileNotFoundError("no sshd: apt-get install -y openssh-server")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        host_key, self.client_key = root / "host_key", root / "client_key"
        for key in (host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (root / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        host_pub = Path(f"{host_key}.pub").read_text().split()
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"Subsystem sftp internal-sftp\nPidFile {root}/sshd.pid\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen([sshd, "-D", "-f", str(config), "-E", str(root / "log")])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError((root / "log").read_text()) from None
                time.sleep(0.05)

    def url(self, path: Path) -> str:
        import getpass

        return f"sftp://{getpass.getuser()}@127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
