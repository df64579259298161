"""The judgement of a small file's ranged answer (``engine._bulk.answer``): pure, so
run over a table of heads, and the quick test for a plain 206 checked against it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine._bulk.answer import EMPTY, PROMOTE, WHOLE, Answer, Piece, Refused, judge, whole
from engine.web_error import WebErrorStatus

LIMIT = 1000
URL = "http://127.0.0.1/f"


def _head(status: int, *fields: str, before: tuple[str, ...] = ()) -> list[bytes]:
    lines = [f"{line}\r\n".encode() for line in before]
    lines.append(f"HTTP/1.1 {status} X\r\n".encode())
    lines += [f"{field}\r\n".encode() for field in fields]
    lines.append(b"\r\n")
    return lines


_REDIRECT = ("HTTP/1.1 302 Found", "Content-Range: bytes 0-99/100", "")


def _kind(answer: Answer) -> object:
    if isinstance(answer, Refused):
        return Refused
    if isinstance(answer, Piece):
        return answer
    return answer


@pytest.mark.parametrize(
    ("lines", "received", "expected"),
    [
        (_head(206, "Content-Range: bytes 0-99/100", "Content-Length: 100"), 100, WHOLE),
        (_head(206, "content-range: bytes 0-99/100"), 100, WHOLE),  # no length: the range's
        (_head(206, "Content-Range: bytes 0-99/*"), 100, WHOLE),  # cut short: the end
        (_head(206, "Content-Range: bytes 0-999/*"), 1000, PROMOTE),  # may go on
        (
            _head(206, "Content-Range: bytes 0-999/5000", 'ETag: "e"', "Last-Modified: M"),
            1000,
            Piece(5000, '"e"', "M"),
        ),
        (_head(206, "Content-Range: bytes 0-99/5000"), 100, Piece(5000, "", "")),
        (_head(416, "Content-Range: bytes */0"), 150, EMPTY),  # the 416's body is not the file's
        # lies: not the range asked for, past its total, two lengths, none, a body cut short
        (_head(206, "Content-Range: bytes 5-104/3000"), 100, Refused),
        (_head(206, "Content-Range: bytes 0-99/50"), 100, Refused),
        (_head(206, "Content-Range: bytes 0-99/100", "Content-Length: 50"), 50, Refused),
        (_head(206, "Content-Length: 100"), 100, Refused),
        (_head(206, "Content-Range: bytes 0-99/100"), 60, Refused),
        (_head(206, "Content-Range: bytes 99-0/100"), 100, Refused),
        # the last head decides: a redirect's fields are not the file's
        (_head(206, "Content-Range: bytes 0-9/10", before=_REDIRECT), 10, WHOLE),
    ],
)  # fmt: skip
def test_a_ranged_answer_is_judged_as_a_first_response(
    lines: list[bytes], received: int, expected: object
) -> None:
    """Whole file, piece of a larger one, promotion, empty file, or a typed refusal."""
    answer = judge(list(lines), received, LIMIT, URL)
    assert _kind(answer) == expected
    if isinstance(answer, Refused):
        assert answer.error.web_error_status is WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE


def test_a_416_of_a_file_that_is_not_empty_is_an_http_error() -> None:
    """A 416 that states no empty file fails as the error status it is, not retried."""
    answer = judge(_head(416, "Content-Range: bytes */500"), 0, LIMIT, URL)
    assert isinstance(answer, Refused)
    assert not answer.transient


_FIELD = st.sampled_from(
    [
        "Content-Range: bytes 0-{last}/{size}",
        "content-range: bytes 0-{last}/{size}",
        "Content-Range: bytes 0-{last}/{other}",
        "Content-Range: bytes 1-{last}/{size}",
        "Content-Range : bytes 0-{last}/{other}",
        "X-Content-Range: bytes 0-{last}/{size}",
        "ETag: \"x\"",
        "Via: HTTP/1.1 proxy",
    ]
)  # fmt: skip


@given(
    st.integers(1, LIMIT),
    st.integers(1, 5000),
    st.lists(_FIELD, max_size=5),
    st.booleans(),
    st.integers(0, 5),
)
def test_the_quick_look_at_a_206_accepts_only_what_judge_calls_whole(
    size: int, other: int, fields: list[str], redirected: bool, at: int
) -> None:
    """``whole`` (a few C calls a file) never says whole where ``judge`` would not, for
    a response whose Content-Length libcurl found to be the body's (its caller's check)."""
    filled = [f.format(last=size - 1, size=size, other=other) for f in fields]
    filled.insert(at % (len(filled) + 1), f"Content-Length: {size}")  # (libcurl's, checked)
    before = ("HTTP/1.1 301 Moved", f"Content-Range: bytes 0-{size - 1}/{size}", "")
    lines = _head(206, *filled, before=before if redirected else ())
    if whole(list(lines), size):
        assert judge(list(lines), size, LIMIT, URL) == WHOLE


def test_the_quick_look_takes_a_plain_206_of_nginx() -> None:
    """nginx's answer to a small file's range is whole at a glance; a redirect, a
    second mention of Content-Range or another total leaves it to ``judge``."""
    plain = ("Server: nginx", "Content-Length: 100", "Content-Range: bytes 0-99/100")
    assert whole(_head(206, *plain), 100)
    assert not whole(_head(206, *plain), 99)
    assert not whole(_head(206, *plain, before=("HTTP/1.1 302 Found", "")), 100)
    assert not whole(_head(206, *plain, "X-Content-Range: none"), 100)
    assert not whole(_head(206, "Content-Range: bytes 0-99/1000"), 100)
