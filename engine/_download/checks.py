"""The checks every response passes before a byte of it is written.

Theory of operation
-------------------
Pure functions of a response head, the range that was asked for and what the
download knows: no handle, no I/O, no state changed (``tests/test_response_checks.py``
runs them over a table of heads, as h11 tests its own).

The first response decides the file (``Verdict.decides``): its size (a 206's
Content-Range total, a 200's Content-Length, none for ``bytes a-b/*``), and whether
ranges work (a 206; a 200 to a ranged request says they do not).  Every later
response must agree before its first byte is written: a 206 starts where it was
asked to, ends within the total it states and frames its body with one length, and
its total and validators (ETag, Last-Modified) are the file's, else the content
changed (``If-Range`` asks the server for the whole new version then, so a 200 to a
request past zero means a change, or ranges ignored).  A refused response stops its
request (``Verdict.stop``); ``refusal`` gives the typed error a user sees when a retry
does not cure it.  Bodies are stored as sent: no Accept-Encoding is sent, and a
Content-Encoding a server claims anyway is part of the bytes (a range of a compressed
body cannot be decoded alone), so no check reads it.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from engine._download.segments import Stop
from engine._net.transport import ResponseHead, http_error
from engine.errors import TransferError, TransportError
from engine.web_error import WebErrorStatus


class Validators(Protocol):
    """The ETag and Last-Modified a response must not contradict ("" for unknown)."""

    @property
    def etag(self) -> str: ...

    @property
    def last_modified(self) -> str: ...


class Known(Validators, Protocol):
    """What a download knows when a response comes (``SegmentedDownload``)."""

    @property
    def size(self) -> int | None:
        """The file's size; None until a response states it (or never: ``bytes a-b/*``)."""

    @property
    def ranges_ok(self) -> bool:
        """Ranges work (True until a response says otherwise)."""

    @property
    def plain(self) -> bool:
        """A response decided a plain file: small, of unknown length, or without ranges."""

    @property
    def reached(self) -> int:
        """Where a plain file's bytes reach."""


class Undecided(NamedTuple):
    """What a download knows before its first response: nothing."""

    size: int | None = None
    ranges_ok: bool = True
    plain: bool = False
    reached: int = 0
    etag: str = ""
    last_modified: str = ""


UNDECIDED = Undecided()
"""Known of a new download, and Validators that nothing contradicts."""


class Verdict(NamedTuple):
    """What a response head means for its request and for the file."""

    stop: Stop | None
    """None: the body is accepted; else why its request stops before its first byte."""
    end: int | None = None
    """Where the accepted body ends: the request's end from now on."""
    decides: bool = False
    """The first response: ``size`` and ``ranges`` decide the file."""
    size: int | None = None
    ranges: bool = True
    ends_body: bool = False
    """A body of unknown length ends with this response, if it reaches ``end``."""
    again: bool = False
    """A 200 from zero where ranges do not work: the body is fetched again from zero."""
    why: str = ""
    """Why the response is not of the file (``Stop.CHANGED``)."""


_made = tuple.__new__
"""``_made(Verdict, (every field))`` makes the verdicts every response gets in C:
NamedTuple's own constructor is a Python function, and a small file's only head is
worth the few bytecodes."""

BAD_RANGE = Verdict(Stop.BAD_RANGE)
NO_RANGES = Verdict(Stop.NO_RANGES)
HTTP_ERROR = Verdict(Stop.HTTP)
BODY_ENDED = Verdict(Stop.BODY_END)


def check_response(
    head: ResponseHead, start: int, end: int | None, known: Known, validators: Validators
) -> Verdict:
    """The verdict on ``head``, the answer to a request for ``[start, end)`` (``end``
    None: to the end of the body).  ``validators``: what the response's own must not
    contradict (the file's, or those of the source it came from)."""
    status = head.status
    if status == 206:
        return _partial(head, start, end, known, validators)
    size = known.size
    if status == 416 and size is None:
        stated = head.unsatisfied_total
        if stated == 0:  # an empty file: nothing of the 416's body is the file's
            return Verdict(None, 0, True, 0, True)
        if known.plain and start == known.reached > 0 and stated in (None, start):
            # nothing past where the last response ended, unless of another version
            why = disagreement(head, None, None, validators)
            return Verdict(Stop.CHANGED, why=why) if why else BODY_ENDED
    if status == 200 or (200 < status < 300 and start == 0):
        length = head.content_length
        why = disagreement(head, length, size, validators)
        if start == 0 and size is None:
            return _made(Verdict, (None, length, True, length, False, False, False, ""))
        if start == 0 and not known.ranges_ok and not why:
            return Verdict(None, size, again=True)  # a broken body starts over from zero
        return Verdict(Stop.CHANGED, why=why) if why else NO_RANGES
    return HTTP_ERROR if status >= 300 else BAD_RANGE


def _partial(
    head: ResponseHead, start: int, end: int | None, known: Known, validators: Validators
) -> Verdict:
    """A 206: the range asked for, framed by one length, of the file's size and version."""
    rng = head.content_range
    if rng is None:
        return BAD_RANGE
    first, last, total = rng
    length = head.content_length
    if (
        first != start
        or last < first
        or (total is not None and last >= total)  # past the total it states
        or (length is not None and length != last - first + 1)
    ):  # (a Content-Length other than the range's: which one frames the body?)
        return BAD_RANGE
    size = known.size
    stop = last + 1
    if size is None:
        if total is None or known.plain:  # (a later one may state it: still unsized)
            return _unsized(head, end, stop, total, known, validators)
        last = stop if end is None else min(end, stop)
        return _made(Verdict, (None, last, True, total, True, False, False, ""))
    why = disagreement(head, total, size, validators)
    if why:
        return Verdict(Stop.CHANGED, why=why)
    last = stop if end is None else min(end, stop)
    return _made(Verdict, (None, last, False, None, True, False, False, ""))


def _unsized(
    head: ResponseHead,
    end: int | None,
    stop: int,
    total: int | None,
    known: Known,
    validators: Validators,
) -> Verdict:
    """A 206 that does not state the complete length (``bytes a-b/*``, RFC 9110 14.4),
    or one that goes on with such a body: a plain file of unknown length, continued
    from where each response ends by an open-ended range, until a response runs to
    the end of the body (it was open-ended, or the server cut the range short: the
    representation ends there) or a 416 says nothing is left.  A later response that
    states a total past its range says the body goes on: it is asked for, whatever
    the range's length."""
    # The body ends with this response if it was open-ended or cut short, and states
    # no total past it; either way it must reach the end its range claims (a
    # close-delimited body cut early is a broken response, not the end).
    ends = (end is None or stop < end) and (total is None or stop >= total)
    if not known.plain:  # the first response
        return Verdict(None, stop, True, None, True, ends)
    why = disagreement(head, None, None, validators)
    if why:
        return Verdict(Stop.CHANGED, why=why)
    return Verdict(None, stop, ends_body=ends)


def disagreement(
    head: ResponseHead, total: int | None, size: int | None, validators: Validators
) -> str:
    """Why a response of complete length ``total`` is not of a file of ``size`` with
    ``validators`` ("" when nothing says so: a value either side does not know
    agrees with anything)."""
    if total is not None and size is not None and total != size:
        return f"its size ({total}) is not the file's ({size})"
    known = validators.etag
    if known:
        etag = head.get("ETag")
        if etag and etag != known:
            return f"its ETag ({etag}) is not {known}"
    known = validators.last_modified
    if known:
        modified = head.get("Last-Modified")
        if modified and modified != known:
            return f"its Last-Modified ({modified}) is not {known}"
    return ""


def missing_support(size: int | None, ranges: bool) -> WebErrorStatus | None:
    """What random access (reads anywhere while it downloads) lacks from a file the
    first response decided: a length, or ranges; None when it has both."""
    if size is None:
        return WebErrorStatus.MISSING_CONTENT_LENGTH_SUPPORT
    return None if ranges else WebErrorStatus.INSUFFICIENT_RANGE_SUPPORT


def unsupported(url: str, status: WebErrorStatus) -> TransportError:
    """The error of a download that needs ranges and a length from a server without."""
    return TransportError(f"{url}: {Stop.UNSUPPORTED.value}", web_error_status=status)


def refusal(stop: Stop, head: ResponseHead, url: str) -> tuple[TransferError, bool]:
    """The typed error of a response refused as an error status or a wrong range, and
    whether a retry may cure it (a 503 may pass; a 404 stays)."""
    if stop is Stop.HTTP:
        return http_error(head.status, url)
    shown = head.get("Content-Range")
    return TransportError(
        f"{url}: {stop.value} ({shown})",
        web_error_status=WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE,
    ), True


def storable(validator: str | None, limit: int) -> str:
    """A validator the control file can hold whole, else none: a cut one would never match."""
    value = validator or ""
    return value if len(value) <= limit and "\0" not in value else ""
