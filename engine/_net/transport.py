"""libcurl through pycurl: easy-handle set-up, response heads, and curl codes mapped to errors.

pycurl ships no type stubs, so it is imported here, in ``multi`` and in
``engine._download.request`` only.  One ``pycurl.AsyncCurlMulti`` (``multi.Multi``)
per engine loop drives every transfer through libcurl's multi-socket API; easy handles
are pooled so their connections stay alive.
"""

from __future__ import annotations

import dataclasses
import errno
import operator
import os
import re
import time
from typing import Any

import pycurl

from engine._net.multi import Multi
from engine.config import TransferConfig
from engine.errors import (
    HttpError,
    InvalidRequestError,
    StorageError,
    TransferError,
    TransferTimeoutError,
    TransportError,
)
from engine.web_error import WebErrorStatus

_E_HTTP2_STREAM = getattr(pycurl, "E_HTTP2_STREAM", 92)
_SEEK_OK: int = pycurl.SEEKFUNC_OK
_SEEK_FAIL: int = pycurl.SEEKFUNC_FAIL
_WEB = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
_ALLOWED = _WEB | pycurl.PROTO_FTP | pycurl.PROTO_FTPS | pycurl.PROTO_SFTP
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)
_STATUS_LINE = re.compile(r"^HTTP/[^ \t\r\n]*[ \t]*([^ \t\r\n]*)[^\n]*\n?", re.MULTILINE)
"""A status line; what follows it, up to the next, is that response's fields."""
_NAME, _VALUE = operator.itemgetter(0), operator.itemgetter(1)
_FIELD = re.compile(
    r"^[ \t]*((?:[^:\r\n]*[^: \t\r\n])?)[ \t]*:[ \t]*((?:[^\r\n]*[^ \t\r\n])?)[ \t]*\r?$",
    re.MULTILINE,
)
"""One header field: name, colon, value (whitespace around both dropped).  Greedy, each
part ending on a character that is not a space: with lazy parts (``*?``) the engine
tried the rest of the pattern after every character, and a small file's head took
6 us to split instead of 3."""

# libcurl code -> (status, transient).  One table: the only place codes become meaning.
_CURL_ERRORS: dict[int, tuple[WebErrorStatus, bool]] = {
    pycurl.E_COULDNT_RESOLVE_HOST: (WebErrorStatus.HOST_NAME_NOT_RESOLVED, False),
    pycurl.E_COULDNT_RESOLVE_PROXY: (WebErrorStatus.HOST_NAME_NOT_RESOLVED, False),
    pycurl.E_COULDNT_CONNECT: (WebErrorStatus.CANNOT_CONNECT, True),
    pycurl.E_OPERATION_TIMEDOUT: (WebErrorStatus.TIMEOUT, True),
    pycurl.E_RECV_ERROR: (WebErrorStatus.CONNECTION_RESET, True),
    pycurl.E_SEND_ERROR: (WebErrorStatus.CONNECTION_RESET, True),
    pycurl.E_PARTIAL_FILE: (WebErrorStatus.CONNECTION_ABORTED, True),
    pycurl.E_GOT_NOTHING: (WebErrorStatus.DISCONNECTED, True),
    pycurl.E_HTTP2: (WebErrorStatus.CONNECTION_RESET, True),
    _E_HTTP2_STREAM: (WebErrorStatus.CONNECTION_RESET, True),
    # CURLE_WEIRD_SERVER_REPLY (8), which pycurl names after its FTP origin:
    pycurl.E_FTP_WEIRD_SERVER_REPLY: (WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE, False),
    pycurl.E_UNSUPPORTED_PROTOCOL: (WebErrorStatus.REDIRECT_FAILED, False),
    pycurl.E_TOO_MANY_REDIRECTS: (WebErrorStatus.REDIRECT_FAILED, False),
    pycurl.E_PEER_FAILED_VERIFICATION: (WebErrorStatus.CERTIFICATE_IS_INVALID, False),
    pycurl.E_SSL_CONNECT_ERROR: (WebErrorStatus.CANNOT_CONNECT, False),
    pycurl.E_URL_MALFORMAT: (WebErrorStatus.UNKNOWN, False),
    # FTP: a missing file and a refused login read as their HTTP equivalents.
    pycurl.E_REMOTE_FILE_NOT_FOUND: (WebErrorStatus.NOT_FOUND, False),
    pycurl.E_FTP_COULDNT_RETR_FILE: (WebErrorStatus.NOT_FOUND, False),
    pycurl.E_LOGIN_DENIED: (WebErrorStatus.UNAUTHORIZED, False),
    pycurl.E_REMOTE_ACCESS_DENIED: (WebErrorStatus.FORBIDDEN, False),
    pycurl.E_FTP_PARTIAL_FILE: (WebErrorStatus.CONNECTION_ABORTED, True),
}
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_E_TOO_LARGE = 100
"""CURLE_TOO_LARGE (libcurl 8.6+, which pycurl may not name): for a response, a header
line or the headers past libcurl's limits (100 KiB a line, 300 KiB in all)."""
_CURL_ERRORS[_E_TOO_LARGE] = (WebErrorStatus.UNKNOWN, False)  # (no status says "too large")
_MESSAGES = {
    _E_TOO_LARGE: "the server sent a response header larger than accepted "
    "(100 KiB a line, 300 KiB in all)",
}
"""Words for the codes libcurl reports without a message of its own."""


def curl_error(code: int, message: str, url: str) -> tuple[TransferError, bool]:
    """The typed error for a libcurl failure and whether a retry may cure it."""
    status, transient = _CURL_ERRORS.get(code, (WebErrorStatus.UNKNOWN, False))
    text = f"{url}: {message or _MESSAGES.get(code, 'libcurl error')} (curl {code})"
    if code == pycurl.E_URL_MALFORMAT:
        return InvalidRequestError(text, web_error_status=status), False
    if code == pycurl.E_UNSUPPORTED_PROTOCOL and "HTTP/0.9" in message:
        status = WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE  # no status line at all
    elif code == pycurl.E_UNSUPPORTED_PROTOCOL and url.lower().startswith("https:"):
        status = WebErrorStatus.HTTPS_TO_HTTP_ON_REDIRECTION
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return TransferTimeoutError(text, web_error_status=status), transient
    return TransportError(text, web_error_status=status), transient


def http_error(status_code: int, url: str) -> tuple[HttpError, bool]:
    """The typed error for a final HTTP status that ends a request."""
    return HttpError(f"{url}: HTTP {status_code}", status_code=status_code), (
        status_code in _TRANSIENT_HTTP
    )


@dataclasses.dataclass
class FtpReplies:
    """What libcurl's FTP commands learnt: MDTM (asked with OPT_FILETIME) comes before
    TYPE, SIZE after it; both answer 213."""

    modified: str = ""
    size: int | None = None
    _typed: bool = False

    def feed(self, text: str) -> None:
        code, _, rest = text.partition(" ")
        if code == "200":
            self._typed = True
        elif code == "213" and rest.strip().isdigit():
            if self._typed:
                self.size = int(rest.strip())
            else:
                self.modified = rest.strip()


@dataclasses.dataclass
class ResponseHead:
    """The last response's status line and headers (names as the server sent them)."""

    status: int = 0
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ftp: FtpReplies | None = None
    """Set for an FTP transfer: its replies stand in for a status line and headers."""
    lines: list[bytes] = dataclasses.field(default_factory=list)
    """Header lines not read yet (see ``parse``)."""
    _index: dict[str, str] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    """``headers`` by lower-case name, the last of each (made by ``get``, dropped when
    they change): a small file's head is asked for five headers."""

    def as_http(self, start: int, end: int | None) -> None:
        """Give an FTP transfer the head an HTTP server would have sent for ``[start, end)``.

        SIZE gives the total and MDTM the validator (as Last-Modified); a transfer
        that asked for a range (libcurl's REST) reads as a 206 with its Content-Range.
        """
        if self.ftp is None:
            return
        if self.ftp.size is None:  # no size known: only a whole, unranged read makes sense
            if start == 0 and end is None:
                self.status = 200
                self.headers = [("Last-Modified", self.ftp.modified)] if self.ftp.modified else []
                self._index = None
            return
        size = self.ftp.size
        self._index = None
        last = size - 1 if end is None else min(end, size) - 1
        self.headers = [("Content-Length", str(max(0, last - start + 1)))]
        if self.ftp.modified:
            self.headers.append(("Last-Modified", self.ftp.modified))
        if start > 0 or end is not None:
            self.status = 206 if start < size else 416
            shown = f"{start}-{last}" if start < size else "*"
            self.headers.append(("Content-Range", f"bytes {shown}/{size}"))
        else:
            self.status = 200

    def get(self, name: str) -> str | None:
        """The last value of header ``name`` (any case), else None."""
        index = self._index
        if index is None:  # built by C iterators: a comprehension cost 90 bytecodes a file
            headers = self.headers
            names = map(str.lower, map(_NAME, headers))
            index = self._index = dict(zip(names, map(_VALUE, headers), strict=True))
        return index.get(name.lower())

    @property
    def content_range(self) -> tuple[int, int, int | None] | None:
        """``(first, last, total)`` of a 206's Content-Range; total None for ``*``."""
        m = _CONTENT_RANGE.fullmatch((self.get("Content-Range") or "").strip())
        if m is None:
            return None
        total = None if m.group(3) == "*" else int(m.group(3))
        return int(m.group(1)), int(m.group(2)), total

    @property
    def unsatisfied_total(self) -> int | None:
        """The size a 416 reports (``bytes */N``), if any."""
        m = _UNSATISFIED_RANGE.fullmatch((self.get("Content-Range") or "").strip())
        return int(m.group(1)) if m else None

    @property
    def content_length(self) -> int | None:
        value = self.get("Content-Length")
        return int(value) if value is not None and value.strip().isdigit() else None

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (delta or HTTP date), if it said."""
        value = self.get("Retry-After")
        if not value:
            return None
        if value.strip().isdigit():
            return float(value.strip())
        import email.utils  # here and in file_time only: 2 ms of every start-up

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    def parse(self) -> None:
        """Read the header lines gathered in ``lines`` (a new status line starts a new
        head: a redirect's, then the next response's).  libcurl's header callback is
        ``lines.append`` itself, parsed once the head is needed: a Python call from C
        for each line cost more than parsing them all, and the lines of each head are
        split by one regular expression over their bytes, not a line at a time."""
        lines = self.lines
        self._index = None
        if self.ftp is not None:
            for line in lines:
                self.ftp.feed(line.decode("latin-1").rstrip("\r\n"))
            lines.clear()
            return
        block = b"".join(lines).decode("latin-1")
        lines.clear()
        heads = _STATUS_LINE.split(block)  # [before, code, fields, code, fields, ...]
        if len(heads) == 1:  # no status line: more fields of the same head
            self.headers.extend(_FIELD.findall(block))
            return
        code = heads[-2]
        self.status = int(code) if code.isdigit() else 0
        self.headers = _FIELD.findall(heads[-1])


@dataclasses.dataclass(frozen=True)
class RequestOptions:
    """What a request carries beyond the URL and headers: method, body, credentials, proxy."""

    method: str = "GET"
    body_file: str | None = None
    """The file whose bytes are the request body (POST and the like).  Each request
    streams it from the disk (``_send_body``): a body of any size costs no memory."""
    user: tuple[str, str] | None = None
    proxy: str | None = None
    proxy_user: tuple[str, str] | None = None

    @property
    def plain(self) -> bool:
        """A GET with no body, credentials or proxy: the options ``configure`` may keep."""
        return (
            self.method == "GET"
            and self.body_file is None
            and self.user is None
            and self.proxy is None
            and self.proxy_user is None
        )

    @property
    def single_request(self) -> bool:
        """A request that must not be split into ranges nor repeated from a middle."""
        return self.method != "GET"


def _set_request(curl: Any, req: RequestOptions) -> None:
    if req.body_file is not None:
        _send_body(curl, req.body_file)
    elif req.method == "POST":
        curl.setopt(pycurl.POST, 1)
        curl.setopt(pycurl.POSTFIELDS, b"")
    if req.method not in ("GET", "POST"):
        curl.setopt(pycurl.CUSTOMREQUEST, req.method)
    if req.user is not None:
        _login(curl, (pycurl.HTTPAUTH, pycurl.USERNAME, pycurl.PASSWORD), req.user)
    if req.proxy is not None:
        curl.setopt(pycurl.PROXY, req.proxy)
    if req.proxy_user is not None:
        _login(curl, (pycurl.PROXYAUTH, pycurl.PROXYUSERNAME, pycurl.PROXYPASSWORD), req.proxy_user)


def _send_body(curl: Any, path: str) -> None:
    """The body is read from ``path`` as libcurl sends it, and read again from the
    start when libcurl must send it again (a 307 or 308 redirect, an authentication
    round): reading the file into memory first cost its whole size per download.
    The file stays open on the handle until ``HandlePool.give`` (or, for a request
    cut short, until the handle is collected)."""
    try:
        body = open(path, "rb")  # noqa: SIM115 (closed by HandlePool.give)
    except OSError as exc:
        raise StorageError(
            exc.errno or errno.EIO, f"request body unreadable: {exc.strerror}", path
        ) from None
    curl.bgt_body = body

    def seek(offset: int, origin: int) -> int:
        try:
            body.seek(offset, origin)
        except (OSError, ValueError):
            return _SEEK_FAIL
        return _SEEK_OK

    curl.setopt(pycurl.POST, 1)
    curl.setopt(pycurl.POSTFIELDSIZE_LARGE, os.fstat(body.fileno()).st_size)
    curl.setopt(pycurl.READFUNCTION, body.read)
    curl.setopt(pycurl.SEEKFUNCTION, seek)


def _login(curl: Any, options: tuple[int, int, int], user: tuple[str, str]) -> None:
    """Any scheme libcurl can negotiate (basic, digest, NTLM...), never sent unasked."""
    auth, name, password = options
    curl.setopt(auth, pycurl.HTTPAUTH_ANY)
    curl.setopt(name, user[0])
    curl.setopt(password, user[1])


def configure(
    curl: Any,
    url: str,
    config: TransferConfig,
    headers: list[str],
    request: RequestOptions | None = None,
) -> None:
    """Every option a bgtransfer request sets: secure defaults, timeouts, big buffers.

    A pooled handle whose last request was a plain GET with the same ``config`` and
    scheme keeps its options: only the URL and headers change (the reset and twenty
    options were a fifth of a small file's set-up).  Anything else starts from a
    reset, and marks the handle so that the next request resets it too."""
    https = url.lower().startswith("https:")
    plain = (request is None or request.plain) and not is_ftp(url) and not is_sftp(url)
    last = getattr(curl, "bgt_profile", None)
    if plain and last is not None and last[0] is config and last[1] == https:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, headers)
        return
    curl.bgt_profile = None
    curl.reset()
    curl.bgt_rate = 0  # the reset lifted any rate limit (engine._net.ratelimit)
    curl.bgt_alone = False  # and any HTTP version (one_connection)
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.PROTOCOLS, _ALLOWED)
    # Redirects go to http(s) only, and https never to plain http: libcurl refuses them.
    curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTPS if https else _WEB)
    curl.setopt(pycurl.FOLLOWLOCATION, 1)
    curl.setopt(pycurl.MAXREDIRS, config.max_redirects)
    curl.setopt(pycurl.UNRESTRICTED_AUTH, 0)  # credentials never follow to another host
    curl.setopt(pycurl.SSL_VERIFYPEER, 1)
    curl.setopt(pycurl.SSL_VERIFYHOST, 2)
    if config.ca_file:
        curl.setopt(pycurl.CAINFO, config.ca_file)
    if config.ca_path:
        curl.setopt(pycurl.CAPATH, config.ca_path)
    curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(config.connect_timeout * 1000))
    curl.setopt(pycurl.LOW_SPEED_LIMIT, config.low_speed_limit)
    curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(config.response_timeout)))
    curl.setopt(pycurl.BUFFERSIZE, config.buffer_size)
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.TCP_KEEPALIVE, 1)
    # Wait for a connection to say whether it multiplexes only where it can: over TLS,
    # ALPN answers before any request.  Over plain http (HTTP/1.1, no h2c) libcurl
    # would hold every request to the host until the first one's answer came, and a
    # first answer that stalls would hold them all.
    curl.setopt(pycurl.PIPEWAIT, 1 if https else 0)
    curl.setopt(pycurl.USERAGENT, "bgtransfer/0.1")
    curl.setopt(pycurl.HTTPHEADER, headers)
    curl.setopt(pycurl.ACCEPT_ENCODING, None)  # never decode: a ranged body is raw bytes
    if request is not None:
        _set_request(curl, request)
    if is_ftp(url) or is_sftp(url):
        curl.setopt(pycurl.OPT_FILETIME, 1)  # MDTM / stat: the validator of the file
    if is_sftp(url):
        _set_ssh(curl, config)
    if plain:
        curl.bgt_profile = (config, https)  # what a later request may keep (see above)


def one_connection(curl: Any, alone: bool) -> None:
    """A ranged request of a file takes a connection of its own: HTTP/1.1, never a
    stream of an HTTP/2 connection that its file's other requests share.  Streams of
    one connection share one TCP window and one server worker: a file over eight of
    them came no faster than over one.  Other requests (a small file, the first of a
    large one) may use HTTP/2 and share a connection."""
    if getattr(curl, "bgt_alone", False) != alone:
        curl.setopt(
            pycurl.HTTP_VERSION,
            pycurl.CURL_HTTP_VERSION_1_1 if alone else pycurl.CURL_HTTP_VERSION_NONE,
        )
        curl.bgt_alone = alone


def unplain(curl: Any) -> None:
    """``curl`` got an option ``configure`` does not set (``NOBODY``, say): its next
    request starts from a reset."""
    curl.bgt_profile = None


def is_ftp(url: str) -> bool:
    return url.lower().startswith(("ftp:", "ftps:"))


def is_sftp(url: str) -> bool:
    return url.lower().startswith("sftp:")


def _set_ssh(curl: Any, config: TransferConfig) -> None:
    """SFTP trusts only host keys listed in known_hosts: without the file, nothing."""
    known = os.path.expanduser(config.ssh_known_hosts)
    if not os.path.isfile(known):
        raise InvalidRequestError(
            f"SFTP needs a known_hosts file to verify the server ({known} does not exist)"
        )
    curl.setopt(pycurl.SSH_KNOWNHOSTS, known)
    if config.ssh_private_key:
        curl.setopt(pycurl.SSH_PRIVATE_KEYFILE, os.path.expanduser(config.ssh_private_key))


def file_time(curl: Any) -> str:
    """The remote file's time (FTP MDTM, SFTP stat) as an HTTP date, "" when unknown."""
    import email.utils

    stamp = curl.getinfo(pycurl.INFO_FILETIME)
    return email.utils.formatdate(stamp, usegmt=True) if stamp and stamp > 0 else ""


def set_range(curl: Any, start: int, end: int | None) -> None:
    """A range for protocols without a Range header (FTP: REST, then ABOR at the end)."""
    if start > 0 or end is not None:
        curl.setopt(pycurl.RANGE, f"{start}-{'' if end is None else end - 1}")


class HandlePool:
    """Reusable easy handles: set-up cost and TLS sessions are paid once."""

    def __init__(self) -> None:
        self._free: list[Any] = []

    def take(self) -> Any:
        return self._free.pop() if self._free else pycurl.Curl()

    def give(self, curl: Any) -> None:
        body = getattr(curl, "bgt_body", None)
        if body is not None:  # a request body's file: closed with its request
            curl.bgt_body = None
            curl.unsetopt(pycurl.READFUNCTION)
            curl.unsetopt(pycurl.SEEKFUNCTION)
            body.close()
        if len(self._free) < 256:
            # an idle handle must not keep the last download (and its operation) alive
            curl.unsetopt(pycurl.WRITEFUNCTION)
            curl.unsetopt(pycurl.HEADERFUNCTION)
            self._free.append(curl)
        else:
            curl.close()

    def close(self) -> None:
        for curl in self._free:
            curl.close()
        self._free.clear()


def new_multi(max_total: int = 256, max_host: int = 64) -> Any:
    """A multi handle driven on the running loop through the multi-socket API."""
    multi = Multi()
    multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, max_total)
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, max_host)
    multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
    return multi


def version() -> str:
    return str(pycurl.version)
