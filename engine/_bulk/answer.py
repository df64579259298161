"""What a small file's ranged response means: the whole file, a piece of a larger one,
or a refusal.

Theory of operation
-------------------
The lean request asks for ``bytes=0-(first_request-1)``: a server that knows ranges
sends no more than that, so a file found larger costs no byte past the first
request, and those it sent are handed to the full operation that takes the file
over (written as its first range, never fetched again).  A 200 (ranges ignored) is
judged by the runner itself: the one answer of most files stays a few bytecodes.  A
206 or a 416 passes ``check_response``, the checks every full operation's first
response passes (``engine._download.checks``): it must start at zero, end within
the total it states and frame its body with one length.  Then the body must have
the length its range says; its total decides the rest: the length received (the
whole file), more (a piece: promoted), or unknown (``bytes a-b/*``: the whole file
if the range was cut short, else promoted without a piece).  A 416 stating an empty
file is an empty file.  Pure functions of the head and the length: no handle, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from engine._download.checks import UNDECIDED, check_response, refusal, storable
from engine._net.transport import ResponseHead
from engine.errors import TransferError, TransportError
from engine.web_error import WebErrorStatus


class Piece(NamedTuple):
    """The first bytes of a larger file, with what its full operation must agree with."""

    size: int
    etag: str
    last_modified: str


class Refused(NamedTuple):
    """The response is not of the file: the typed error, and whether a retry may cure it."""

    error: TransferError
    transient: bool


WHOLE = "whole"
"""The body is the whole file."""
EMPTY = "empty"
"""The file is empty (a 416 stating so): nothing of the response's body is the file's."""
PROMOTE = "promote"
"""The file is larger and nothing of it can be handed over: a full operation fetches it."""

Answer = str | Piece | Refused


def judge(lines: list[bytes], received: int, limit: int, url: str) -> Answer:
    """The meaning of a 206 or 416 to ``bytes=0-(limit-1)`` whose header lines (of every
    response, redirects first) are ``lines`` and whose body has ``received`` bytes."""
    head = ResponseHead(lines=lines)
    head.parse()
    verdict = check_response(head, 0, limit, UNDECIDED, UNDECIDED)
    if verdict.stop is not None:
        return Refused(*refusal(verdict.stop, head, url))
    if head.status == 416:  # accepted only as an empty file
        return EMPTY
    rng = head.content_range
    assert rng is not None  # (an accepted 206 has one)
    stop = rng[1] + 1
    if received != stop:  # a body cut short, or past its range: which one is the file?
        what = f"{received} bytes where Content-Range said {stop}"
        return Refused(lie(url, what), True)
    total = rng[2]
    if total == received or (total is None and verdict.ends_body):
        return WHOLE
    if total is None:  # ``bytes 0-(limit-1)/*``: how far it goes, only the full path finds
        return PROMOTE
    etag = storable(head.get("ETag"), 256)
    return Piece(total, etag, storable(head.get("Last-Modified"), 128))


def lie(url: str, what: str) -> TransportError:
    """The error of a response that contradicts itself or the request."""
    return TransportError(
        f"{url}: {what}", web_error_status=WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE
    )


def whole(lines: list[bytes], size: int) -> bool:
    """Whether the header lines of a 206 of ``size`` bytes (Content-Length ``size``,
    as libcurl found) say, beyond doubt, that it is the whole file: one response (no
    redirect or interim head before it), one mention of Content-Range, and that one
    ``bytes 0-(size-1)/size``.  A few C calls where ``judge`` parses every header;
    anything less plain goes to ``judge``, which accepts all this accepts."""
    if size <= 0:
        return False
    block = b"".join(lines).lower()
    return (
        block.count(b"content-range") == 1
        and block.count(b"\nhttp/") == 0
        and b"\ncontent-range: bytes 0-%d/%d\r\n" % (size - 1, size) in block
    )
