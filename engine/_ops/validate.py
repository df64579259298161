"""Checks of what callers pass in, before anything is stored or sent."""

from __future__ import annotations

import functools
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from engine.errors import InvalidRequestError

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


_ENGINE_HEADERS = frozenset({"range", "if-range"})
"""Headers the engine sets on each request itself: a caller's Range asked every
connection for the same bytes, and every 206 was refused as not the range asked for."""


def check_header(name: str, value: str) -> None:
    """Refuse a header that could split the request (names are tokens, no CR/LF/NUL
    in values), and the headers of the engine's own ranged requests."""
    if not _TOKEN.match(name):
        raise InvalidRequestError(f"invalid request header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise InvalidRequestError(f"request header {name!r}: value contains CR, LF or NUL")
    if not value.isascii():  # no encoding of it would mean the same to every server
        raise InvalidRequestError(
            f"request header {name!r}: value has non-ASCII characters ({value!r}); "
            "encode them as the server expects (e.g. percent- or RFC 8187-encoding)"
        )
    if name.lower() in _ENGINE_HEADERS:
        raise InvalidRequestError(
            f"request header {name!r} is bgtransfer's own: it asks each connection for "
            "the range it needs (If-Range with the validator)"
        )


@functools.lru_cache(maxsize=256)
def _split_origin(origin: str) -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(origin)


@functools.lru_cache(maxsize=256)
def _host(origin: str) -> str:
    return _split_origin(origin).hostname or ""  # hostname is parsed again at each call


def _origin(uri: str) -> str:
    start = uri.find("://")
    end = uri.find("/", start + 3) if start >= 0 else -1
    return uri if end < 0 else uri[:end]


def origin_parts(uri: str) -> urllib.parse.SplitResult:
    """``urlsplit`` of the scheme and authority of ``uri`` (path, query and fragment
    left out): parsed once for the thousands of URLs of a mirror that share them."""
    return _split_origin(_origin(uri))


def host_of(uri: str) -> str:
    return _host(_origin(uri))


def check_uri(uri: str) -> None:
    """Schemes the engine speaks; anything else is refused before it is stored."""
    try:
        parts = origin_parts(uri)
    except ValueError as exc:  # a broken IPv6 literal, say
        raise InvalidRequestError(f"not a URL bgtransfer can download: {uri!r} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https", "ftp", "ftps", "sftp") or not parts.netloc:
        raise InvalidRequestError(f"not a URL bgtransfer can download: {uri!r}")
    if any(c in uri for c in "\r\n\0 "):
        raise InvalidRequestError(f"URL contains whitespace or control characters: {uri!r}")
    if not uri.isascii():  # libcurl takes bytes: a host in punycode, a path %-encoded
        raise InvalidRequestError(
            f"URL has non-ASCII characters: {uri!r}; write the host in punycode "
            "(xn--...) and percent-encode the path"
        )
    if "@" in parts.netloc and parts.password is not None:  # (no parse a plain URL)
        host = parts.netloc.rpartition("@")[2]
        shown = uri.replace(parts.netloc, f"{parts.username}:***@{host}", 1)
        raise InvalidRequestError(
            f"{shown}: a password in the URL would be stored with the operation; pass it "
            "as server_credential, which stays in memory"
        )


def check_sources(uri: str, sources: Sequence[str]) -> list[str]:
    """More URLs of ``uri``'s content: each checked as ``uri`` is, all over http or
    https (the head of each response tells whether it agrees), none twice."""
    if isinstance(sources, str):
        raise InvalidRequestError("sources must be a list of URLs, not one string")
    extra: list[str] = []
    for url in sources:
        check_uri(url)
        if not all(u.lower().startswith(("http:", "https:")) for u in (uri, url)):
            raise InvalidRequestError(f"{url}: several sources work over http and https only")
        if url != uri and url not in extra:
            extra.append(url)
    return extra


def new_guid() -> str:
    """``str(uuid.uuid4())`` without the UUID object (its __init__ is a hundred
    bytecodes, made for every operation): 122 random bits, version 4, RFC 4122."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def absolute(path: os.PathLike[str] | str) -> Path:
    return Path(os.path.abspath(os.fspath(path)))
