"""The response checks without a server: a table of response heads, the range each
answers and what the download knew, and the verdict each must get (h11's style).

The table holds every lie the fuzz test (test_fuzz_responses.py) and the fault matrix
(test_fault_matrix.py) make a server tell: a range that starts elsewhere, ends before
it starts or past its stated total, a Content-Length other than the range's, another
total or version, a 200 where a range was asked, a 416 that ends or does not end a
body of unknown length, error statuses and a response with no status line at all.
"""

from __future__ import annotations

import pytest

from engine._download.checks import (
    BAD_RANGE,
    BODY_ENDED,
    HTTP_ERROR,
    NO_RANGES,
    UNDECIDED,
    Undecided,
    Verdict,
    check_response,
    disagreement,
    missing_support,
    refusal,
    storable,
    unsupported,
)
from engine._download.segments import Stop
from engine._net.transport import FtpReplies, ResponseHead
from engine.errors import HttpError, TransportError
from engine.web_error import WebErrorStatus

SIZE = 600_000
FIRST = (0, 131_072)
"""The first request: the opening range of a new download."""
LATER = (131_072, 262_144)
"""A later request of a file fetched in ranges."""
RANGED = Undecided(size=SIZE, etag='"v1"', last_modified="Mon, 07 Dec 2026 10:00:00 GMT")
"""A file the first response decided: fetched in ranges, with both validators."""
NO_RANGE_FILE = Undecided(size=SIZE, ranges_ok=False, plain=True, reached=70_000, etag='"v1"')
"""A file from a server that ignores ranges, whose body broke off at 70000."""
UNSIZED = Undecided(plain=True, reached=131_072, etag='"v1"')
"""A body of unknown length (``bytes a-b/*``), continued from where it got to."""
ETAG = 'ETag: "v1"'


def head(status_line: str, *fields: str) -> ResponseHead:
    """A head as libcurl hands it over, a line a call, then parsed as the engine does."""
    h = ResponseHead()
    h.lines.extend(f"{line}\r\n".encode("latin-1") for line in (status_line, *fields, ""))
    h.parse()
    return h


def ok206(first: int, last: int, total: int | str = SIZE, *more: str) -> ResponseHead:
    """A 206 for ``first-last/total`` with the length its range has."""
    return head(
        "HTTP/1.1 206 Partial Content",
        f"Content-Range: bytes {first}-{last}/{total}",
        f"Content-Length: {last - first + 1}",
        *more,
    )


def changed(why: str) -> Verdict:
    return Verdict(Stop.CHANGED, why=why)


# (id, head, (start, end) asked, what the download knew, the verdict)
TABLE: list[tuple[str, ResponseHead, tuple[int, int | None], Undecided, Verdict]] = [
    # -- the first response decides the file ----------------------------------------
    ("206 decides", ok206(0, 131_071, SIZE, ETAG), FIRST, UNDECIDED,
     Verdict(None, 131_072, True, SIZE)),
    ("206 of a small file, whole", ok206(0, 10_239, 10_240), FIRST, UNDECIDED,
     Verdict(None, 10_240, True, 10_240)),
    ("206 past the range asked: cut to it", ok206(0, 200_000), FIRST, UNDECIDED,
     Verdict(None, 131_072, True, SIZE)),
    ("206 without Content-Length", head(
        "HTTP/1.1 206 X", "Content-Range: bytes 0-131071/600000"), FIRST, UNDECIDED,
     Verdict(None, 131_072, True, SIZE)),
    ("206 of unknown total", ok206(0, 131_071, "*"), FIRST, UNDECIDED,
     Verdict(None, 131_072, True, None, True, ends_body=False)),
    ("206 of unknown total, cut short: the body ends there", ok206(0, 99, "*"), FIRST,
     UNDECIDED, Verdict(None, 100, True, None, True, ends_body=True)),
    ("206 after a redirect: the last head counts", head(
        "HTTP/1.1 302 Found", "Location: /elsewhere", "",
        "HTTP/1.1 206 Partial Content", "Content-Range: bytes 0-131071/600000"),
     FIRST, UNDECIDED, Verdict(None, 131_072, True, SIZE)),
    ("206 claimed encoding: stored as sent", ok206(0, 131_071, SIZE, "Content-Encoding: gzip"),
     FIRST, UNDECIDED, Verdict(None, 131_072, True, SIZE)),
    ("200 decides: no ranges", head("HTTP/1.1 200 OK", f"Content-Length: {SIZE}", ETAG),
     FIRST, UNDECIDED, Verdict(None, SIZE, True, SIZE, False)),
    ("200 of unknown length", head("HTTP/1.1 200 OK", "Connection: close"), FIRST,
     UNDECIDED, Verdict(None, None, True, None, False)),
    ("200 claimed encoding: stored as sent", head(
        "HTTP/1.1 200 OK", "Content-Encoding: gzip", "Content-Length: 5000"), FIRST,
     UNDECIDED, Verdict(None, 5000, True, 5000, False)),
    ("204 from zero: an empty file", head("HTTP/1.1 204 No Content"), FIRST, UNDECIDED,
     Verdict(None, None, True, None, False)),
    ("416 of an empty file: none of its body is the file", head(
        "HTTP/1.1 416 X", "Content-Range: bytes */0", "Content-Length: 50"), FIRST,
     UNDECIDED, Verdict(None, 0, True, 0, True)),
    ("416 of a file that has bytes", head(
        "HTTP/1.1 416 X", f"Content-Range: bytes */{SIZE}"), FIRST, UNDECIDED, HTTP_ERROR),
    ("FTP: SIZE and a REST read as a 206", ResponseHead(ftp=FtpReplies("", 1000)),
     FIRST, UNDECIDED, Verdict(None, 1000, True, 1000)),
    # -- lies about the range -----------------------------------------------------------
    ("206 starting a byte late", ok206(1, 131_072), FIRST, UNDECIDED, BAD_RANGE),
    ("206 starting a byte early", ok206(131_071, 262_143), LATER, RANGED, BAD_RANGE),
    ("206 starting a block away", ok206(135_168, 262_143), LATER, RANGED, BAD_RANGE),
    ("206 ending before it starts", head(
        "HTTP/1.1 206 X", "Content-Range: bytes 131072-131000/600000"), LATER, RANGED, BAD_RANGE),
    ("206 past the total it states", ok206(0, 131_071, 100), FIRST, UNDECIDED, BAD_RANGE),
    ("206 ending at its total", ok206(0, 131_071, 131_071), FIRST, UNDECIDED, BAD_RANGE),
    ("206 longer Content-Length", head(
        "HTTP/1.1 206 X", "Content-Range: bytes 0-131071/600000", "Content-Length: 131172"),
     FIRST, UNDECIDED, BAD_RANGE),
    ("206 shorter Content-Length", head(
        "HTTP/1.1 206 X", "Content-Range: bytes 0-131071/600000", "Content-Length: 130972"),
     FIRST, UNDECIDED, BAD_RANGE),
    ("206 without Content-Range", head("HTTP/1.1 206 X", "Content-Length: 131072"), FIRST,
     UNDECIDED, BAD_RANGE),
    ("206 with a Content-Range it cannot mean", head(
        "HTTP/1.1 206 X", "Content-Range: bytes 0-131071"), FIRST, UNDECIDED, BAD_RANGE),
    ("206 of the whole file to a later range (wrong-range)", ok206(1, SIZE - 1), LATER,
     RANGED, BAD_RANGE),
    ("no status line at all (garbage)", head("SSH-2.0-OpenSSH"), FIRST, UNDECIDED, BAD_RANGE),
    ("a 1xx as the last head", head("HTTP/1.1 100 Continue"), LATER, RANGED, BAD_RANGE),
    # -- later responses must be of the same file ------------------------------------------
    ("206 of the file", ok206(131_072, 262_143, SIZE, ETAG), LATER, RANGED,
     Verdict(None, 262_144)),
    ("206 without validators agrees", ok206(131_072, 262_143), LATER, RANGED,
     Verdict(None, 262_144)),
    ("206 past the range asked: cut to it", ok206(131_072, SIZE - 1), LATER, RANGED,
     Verdict(None, 262_144)),
    ("206 cut short of the range: the rest asked again", ok206(131_072, 140_000), LATER,
     RANGED, Verdict(None, 140_001)),
    ("206 of another total", ok206(131_072, 262_143, SIZE + 1), LATER, RANGED,
     changed(f"its size ({SIZE + 1}) is not the file's ({SIZE})")),
    ("206 of a total one short", ok206(131_072, 262_143, SIZE - 1), LATER, RANGED,
     changed(f"its size ({SIZE - 1}) is not the file's ({SIZE})")),
    ("206 of another ETag", ok206(131_072, 262_143, SIZE, 'ETag: "v2"'), LATER, RANGED,
     changed('its ETag ("v2") is not "v1"')),
    ("206 of another Last-Modified", ok206(
        131_072, 262_143, SIZE, "Last-Modified: Tue, 08 Dec 2026 10:00:00 GMT"), LATER, RANGED,
     changed("its Last-Modified (Tue, 08 Dec 2026 10:00:00 GMT) is not "
             "Mon, 07 Dec 2026 10:00:00 GMT")),
    ("200 to a range: ranges ignored (no-ranges)", head(
        "HTTP/1.1 200 OK", f"Content-Length: {SIZE}", ETAG), LATER, RANGED, NO_RANGES),
    ("200 from zero where ranges worked", head(
        "HTTP/1.1 200 OK", f"Content-Length: {SIZE}", ETAG), (0, 131_072), RANGED, NO_RANGES),
    ("200 of another ETag: If-Range sent the new version (change)", head(
        "HTTP/1.1 200 OK", f"Content-Length: {SIZE}", 'ETag: "v2"'), LATER, RANGED,
     changed('its ETag ("v2") is not "v1"')),
    ("200 of another length", head("HTTP/1.1 200 OK", "Content-Length: 5"), LATER, RANGED,
     changed(f"its size (5) is not the file's ({SIZE})")),
    ("416 once the size is known", head(
        "HTTP/1.1 416 X", f"Content-Range: bytes */{SIZE}"), LATER, RANGED, HTTP_ERROR),
    ("404", head("HTTP/1.1 404 Not Found"), LATER, RANGED, HTTP_ERROR),
    ("500", head("HTTP/1.1 500 Oops"), FIRST, UNDECIDED, HTTP_ERROR),
    ("503 (503-once)", head("HTTP/1.1 503 Busy", "Retry-After: 1"), FIRST, UNDECIDED,
     HTTP_ERROR),
    ("429 (429-once)", head("HTTP/1.1 429 Slow down"), LATER, RANGED, HTTP_ERROR),
    ("a redirect that is the last head (redirect-loop)", head(
        "HTTP/1.1 302 Found", "Location: /again"), FIRST, UNDECIDED, HTTP_ERROR),
    # -- a server without ranges: each retry from zero ----------------------------------------
    ("200 again from zero", head("HTTP/1.1 200 OK", f"Content-Length: {SIZE}", ETAG),
     (0, SIZE), NO_RANGE_FILE, Verdict(None, SIZE, again=True)),
    ("200 again from zero, of another version", head(
        "HTTP/1.1 200 OK", f"Content-Length: {SIZE}", 'ETag: "v2"'), (0, SIZE), NO_RANGE_FILE,
     changed('its ETag ("v2") is not "v1"')),
    # -- a body of unknown length goes on -----------------------------------------------------
    ("206 of unknown total, open-ended: the body ends with it", ok206(131_072, 262_143, "*"),
     (131_072, None), UNSIZED, Verdict(None, 262_144, ends_body=True)),
    ("206 stating a total past its range: the body goes on", ok206(131_072, 262_143, SIZE),
     (131_072, None), UNSIZED, Verdict(None, 262_144, ends_body=False)),
    ("206 of unknown total, another ETag", ok206(131_072, 262_143, "*", 'ETag: "v2"'),
     (131_072, None), UNSIZED, changed('its ETag ("v2") is not "v1"')),
    ("416 where the body got to: its end", head("HTTP/1.1 416 X", "Content-Range: bytes */*"),
     (131_072, None), UNSIZED, BODY_ENDED),
    ("416 stating the length the body got to: its end", head(
        "HTTP/1.1 416 X", "Content-Range: bytes */131072"), (131_072, None), UNSIZED, BODY_ENDED),
    ("416 of another version: a change, not the end", head(
        "HTTP/1.1 416 X", "Content-Range: bytes */*", 'ETag: "v2"'), (131_072, None), UNSIZED,
     changed('its ETag ("v2") is not "v1"')),
    ("416 stating a length past where it got: wrong", head(
        "HTTP/1.1 416 X", f"Content-Range: bytes */{SIZE}"), (131_072, None), UNSIZED,
     HTTP_ERROR),
    ("416 from zero: not the end of a body", head("HTTP/1.1 416 X", "Content-Range: bytes */*"),
     (0, None), Undecided(plain=True), HTTP_ERROR),
    ("200 where a range went on: ranges ignored", head("HTTP/1.1 200 OK"), (131_072, None),
     UNSIZED, NO_RANGES),
]  # fmt: skip


@pytest.mark.parametrize(
    ("response", "asked", "known", "verdict"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_verdict(
    response: ResponseHead, asked: tuple[int, int | None], known: Undecided, verdict: Verdict
) -> None:
    """Each head of the table gets its verdict, from the file's own validators."""
    response.as_http(*asked)
    assert check_response(response, *asked, known, known) == verdict


def test_the_table_has_every_verdict() -> None:
    """Every way a head can stop its request, and acceptance, is in the table."""
    by_head = {Stop.BAD_RANGE, Stop.NO_RANGES, Stop.CHANGED, Stop.HTTP, Stop.BODY_END}
    assert {row[4].stop for row in TABLE} == {None, *by_head}


def test_a_source_is_held_to_its_own_validators() -> None:
    """A mirror is judged by the validators it sent before (or by none when the
    caller's checksum decides): the file's size still binds it."""
    mirror = Undecided(etag='"m1"')
    response = ok206(131_072, 262_143, SIZE, 'ETag: "m1"')
    assert check_response(response, *LATER, RANGED, mirror) == Verdict(None, 262_144)
    assert check_response(response, *LATER, RANGED, RANGED).why == 'its ETag ("m1") is not "v1"'
    other = ok206(131_072, 262_143, SIZE + 1, 'ETag: "m1"')
    assert check_response(other, *LATER, RANGED, UNDECIDED).stop is Stop.CHANGED


def test_disagreement_ignores_what_either_side_does_not_know() -> None:
    """A validator or size one side lacks agrees with anything."""
    bare = head("HTTP/1.1 206 X")
    assert disagreement(bare, None, SIZE, RANGED) == ""
    assert disagreement(ok206(0, 1, SIZE, 'ETag: "v9"'), SIZE, None, UNDECIDED) == ""


@pytest.mark.parametrize(
    ("status", "kind", "web", "transient"),
    [
        (404, HttpError, WebErrorStatus.NOT_FOUND, False),
        (403, HttpError, WebErrorStatus.FORBIDDEN, False),
        (500, HttpError, WebErrorStatus.INTERNAL_SERVER_ERROR, True),
        (503, HttpError, WebErrorStatus.SERVICE_UNAVAILABLE, True),
        (429, HttpError, None, True),
    ],
)
def test_an_error_status_is_its_typed_error(
    status: int, kind: type[Exception], web: WebErrorStatus | None, transient: bool
) -> None:
    """An error status becomes the HttpError of that status; 5xx and 429 are retried."""
    err, again = refusal(Stop.HTTP, head(f"HTTP/1.1 {status} X"), "http://h/f")
    assert isinstance(err, kind)
    assert (again, str(err)) == (transient, f"http://h/f: HTTP {status}")
    if web is not None:
        assert err.web_error_status is web


def test_a_wrong_range_is_an_invalid_response_retried() -> None:
    """A refused Content-Range is an invalid server response, retried, and named."""
    err, again = refusal(Stop.BAD_RANGE, ok206(1, 5), "http://h/f")
    assert isinstance(err, TransportError)
    assert again
    assert err.web_error_status is WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE
    assert "bytes 1-5/600000" in str(err)


def test_random_access_needs_a_length_and_ranges() -> None:
    """A file without a length, or from a server without ranges, cannot be read anywhere."""
    assert missing_support(None, True) is WebErrorStatus.MISSING_CONTENT_LENGTH_SUPPORT
    assert missing_support(SIZE, False) is WebErrorStatus.INSUFFICIENT_RANGE_SUPPORT
    assert missing_support(SIZE, True) is None
    err = unsupported("http://h/f", WebErrorStatus.INSUFFICIENT_RANGE_SUPPORT)
    assert err.web_error_status is WebErrorStatus.INSUFFICIENT_RANGE_SUPPORT


def test_a_validator_the_control_file_cannot_hold_is_none() -> None:
    """A validator cut to fit would never match again: one too long, or with NUL, is dropped."""
    assert storable('"v1"', 256) == '"v1"'
    assert storable("x" * 257, 256) == ""
    assert storable("a\0b", 256) == ""
    assert storable(None, 256) == ""
