"""Checks of what callers pass in, before anything is stored or sent."""

from __future__ import annotations

import os
import re
import urllib.parse
import uuid
from pathlib import Path

from engine.errors import InvalidRequestError

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_header(name: str, value: str) -> None:
    """Refuse a header that could split the request: names are tokens, no CR/LF/NUL."""
    if not _TOKEN.match(name):
        raise InvalidRequestError(f"invalid request header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise InvalidRequestError(f"request header {name!r}: value contains CR, LF or NUL")


def check_uri(uri: str) -> None:
    """Schemes the engine speaks; anything else is refused before it is stored."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https", "ftp", "ftps", "sftp") or not parts.netloc:
        raise InvalidRequestError(f"not a URL bgtransfer can download: {uri!r}")
    if any(c in uri for c in "\r\n\0 "):
        raise InvalidRequestError(f"URL contains whitespace or control characters: {uri!r}")


def new_guid() -> str:
    return str(uuid.uuid4())


def absolute(path: os.PathLike[str] | str) -> Path:
    return Path(os.path.abspath(os.fspath(path)))
