"""Names the command line derives from URLs and mirror lists: one safe component each."""

from __future__ import annotations

import pytest

from engine.cli.names import Entry, name_from_url, parse_list, safe_name, unique_names


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/dir/file.bin", "file.bin"),
        ("http://h/dir/sub/", "sub"),  # a trailing slash is no segment of its own
        ("http://h/dir/sub/.", "sub"),
        ("http://h/", "download.bin"),
        ("http://h", "download.bin"),
        ("http://h/a%2Fb", "a_b"),  # an encoded separator stays inside the name
        ("http://h/..%2F..%2Fetc", "_.._etc"),
        ("http://h/%2e%2e", "download.bin"),
        ("http://h/a%00b%0A", "a_b_"),
        ("http://h/cafe%CC%81", "caf\u00e9"),  # decomposed: made NFC
        ("http://h/.hidden", "hidden"),
        ("http://h/-rf", "rf"),
        ("http://h/f.txt?x=1#top", "f.txt"),
    ],
)
def test_name_from_url(url: str, name: str) -> None:
    assert name_from_url(url) == name


def test_safe_name_cuts_long_names_on_a_character() -> None:
    name = safe_name("\u00e9" * 150)
    assert len(name.encode()) <= 200
    assert name == "\u00e9" * 100


def test_list_names_are_made_safe_and_unique() -> None:
    """Names from a list are made safe, collisions suffixed, and each rename reported."""
    text = (
        "http://h/a/x.bin\nhttp://h/b/X.bin\nhttp://h/c ../../x.bin\n# c\n\nhttp://h/d dir/\x01e\n"
    )
    listed = parse_list(text.splitlines(), "l.txt")
    entries = listed.entries
    assert [e.name for e in entries] == ["x.bin", "X.1.bin", "_.._x.bin", "dir__e"]
    assert [e.url for e in entries] == [
        "http://h/a/x.bin",
        "http://h/b/X.bin",
        "http://h/c",
        "http://h/d",
    ]
    assert listed.renamed == ["l.txt:2: the name is taken by line 1: saved as X.1.bin"]
    assert listed.bad == []


def test_every_bad_line_is_reported_with_its_number() -> None:
    """A list is read whole: every bad line is reported with its number, the good kept."""
    text = "http://h/a\nnot-a-url\nhttp://h/b\ngopher://h/c\nhttp://h/d sha256=zz\nhttp://h/e\n"
    listed = parse_list(text.splitlines(), "l.txt")
    problems = listed.bad
    assert [e.url for e in listed.entries] == ["http://h/a", "http://h/b", "http://h/e"]
    assert [p.split(":")[1] for p in problems] == ["2", "4", "5"]
    assert problems[0] == "l.txt:2: 'not-a-url' is not a URL"


def test_unique_names_names_the_line_a_renamed_entry_collided_with() -> None:
    """A third copy of a name becomes .2, and names the line of the first."""
    entries, renamed = unique_names([Entry(f"http://h/{i}", "f.bin", None, i) for i in (1, 2, 3)])
    assert [e.name for e in entries] == ["f.bin", "f.1.bin", "f.2.bin"]
    assert [(e.line, first) for e, first in renamed] == [(2, 1), (3, 1)]
