"""What the command line says when something fails: in a user's words, secrets masked.

An error line says what failed (the URL, masked, or the file), why in plain words,
how many tries the engine made over how long when it retried, and what to do next.
libcurl's own wording and code ("Failed to connect ... after 0 ms", ``(curl 7)``)
stay out of it: ``--debug`` shows them, with the traceback.
"""

from __future__ import annotations

import http
import re
import sys
from typing import Protocol

from engine import TransferError, WebErrorStatus
from engine._ops.masking import mask_text, mask_url
from engine._ops.validate import host_of
from engine.errors import IntegrityError, InvalidRequestError, StorageError


class Failed(Protocol):
    """What ``describe`` reads of what failed: an operation, or a bulk job's file."""

    @property
    def requested_uri(self) -> str: ...

    @property
    def method(self) -> str: ...


W = WebErrorStatus

_NETWORK = frozenset(
    {W.CANNOT_CONNECT, W.SERVER_UNREACHABLE, W.CONNECTION_RESET, W.CONNECTION_ABORTED}
    | {W.DISCONNECTED, W.TIMEOUT, W.HOST_NAME_NOT_RESOLVED}
)
_CERTIFICATE = frozenset(
    {W.CERTIFICATE_IS_INVALID, W.CERTIFICATE_EXPIRED, W.CERTIFICATE_REVOKED}
    | {W.CERTIFICATE_COMMON_NAME_IS_INCORRECT, W.CERTIFICATE_CONTAINS_ERRORS}
)

_WHAT = {
    W.CANNOT_CONNECT: "could not connect to {host}",
    W.SERVER_UNREACHABLE: "{host} is unreachable",
    W.HOST_NAME_NOT_RESOLVED: "no host named {host} was found",
    W.TIMEOUT: "{host} stopped answering",
    W.CONNECTION_RESET: "the connection to {host} broke off",
    W.CONNECTION_ABORTED: "the connection to {host} broke off",
    W.DISCONNECTED: "{host} closed the connection without an answer",
    W.ERROR_HTTP_INVALID_SERVER_RESPONSE: "{host} answered with something that is not HTTP",
    W.HTTPS_TO_HTTP_ON_REDIRECTION: "a redirect from https to plain http was refused",
    W.REDIRECT_FAILED: "a redirect could not be followed (too many, or not to http/https)",
    W.INSUFFICIENT_RANGE_SUPPORT: "{host} does not serve ranges, which random access needs",
    W.MISSING_CONTENT_LENGTH_SUPPORT: "{host} does not say the size, which random access needs",
}

TLS_HINT = (
    "trust the server's certificate authority with --cacert FILE or --capath DIR "
    "(or SSL_CERT_FILE, SSL_CERT_DIR)"
)

_CURL_NOISE = re.compile(r" after \d+ ms| \(curl \d+\)$")


def reason(exc: TransferError, url: str) -> str:
    """Why ``exc`` ended a download from ``url``, in plain words (``list``'s REASON)."""
    status = exc.web_error_status
    host = host_of(url) or "the server"
    if isinstance(exc, StorageError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    code = getattr(exc, "status_code", None)
    if code is not None:
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "(an unknown status)"
        return f"the server answered {code} {phrase}"
    if status in _CERTIFICATE:
        return f"the TLS certificate of {host} could not be verified"
    template = _WHAT.get(status) if status is not None else None
    if template is not None:
        return template.format(host=host)
    text = _CURL_NOISE.sub("", str(exc))
    masked = mask_url(url)
    return text[len(masked) + 2 :] if text.startswith(f"{masked}: ") else text


def _what(exc: TransferError, url: str) -> str:
    """What failed and why: the URL (masked) first, unless the reason names a file."""
    why = reason(exc, url)
    if isinstance(exc, (StorageError, IntegrityError, InvalidRequestError)):
        return why
    return f"{mask_url(url)}: {why}"


def _hint(exc: TransferError, kept: bool) -> str:
    status = exc.web_error_status
    again = "run the same command again to continue (the partial data is kept)"
    if not kept:
        again = "run the same command again"
    code = getattr(exc, "status_code", 0)
    if status in _CERTIFICATE:
        return TLS_HINT
    if code in (401, 407):
        return f"check the login (-u USER[:PASSWORD]), then {again}"
    if code in (403, 404, 410):
        return f"check the URL; {again}, or with a new URL for the same file"
    if status in _NETWORK or 500 <= code < 600 or code in (408, 429):
        return f"check the address and the network, or wait for the server; then {again}"
    if isinstance(exc, IntegrityError):
        return "the data was removed: check the checksum, or the URL"
    if isinstance(exc, StorageError):
        return f"free some space or fix the path, then {again}"
    return ""


def describe(exc: BaseException, op: Failed | None = None, debug: bool = False) -> str:
    """One line about ``exc``: what failed, the tries, what to do (see module doc)."""
    if isinstance(exc, OSError) and exc.strerror:  # as the shell's tools word one
        line = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        line = _CURL_NOISE.sub("", str(exc))
    if not isinstance(exc, TransferError):
        return mask_text(line)
    if op is not None:
        line = _what(exc, op.requested_uri)
    if exc.attempts > 1:
        line += f" (tried {exc.attempts} times over {exc.retried_for:.1f} s)"
    kept = op is not None and op.method == "GET" and not isinstance(exc, IntegrityError)
    hint = _hint(exc, kept) if op is not None else ""
    if hint:
        line += f"; {hint}"
    if debug:
        line += f" [{exc}]"
    return line


def say(line: str) -> None:
    """One line on stderr, prefixed with the program's name, any URL in it masked."""
    print(f"bgtransfer: {mask_text(line)}", file=sys.stderr)
