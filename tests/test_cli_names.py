"""Names the command line derives from URLs and mirror lists: one safe component each."""

from __future__ import annotations

import pytest

from engine.cli.names import name_from_url, parse_list, safe_name


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


def test_names_from_urls_are_made_safe_and_written_names_checked() -> None:
    """A name taken from a URL is made safe; a NAME written on the line that is not a
    plain file of the folder, or that a line before took (any case), is a bad line."""
    text = (
        "http://h/a/x.bin\nhttp://h/b/X.bin\nhttp://h/c ../../x.bin\n# c\n\n"
        "http://h/d dir/\x01e\nhttp://h/..%2Fy\nhttp://h/e .hidden\n"
    )
    listed = parse_list(text.splitlines(), "l.txt")
    assert [(e.url, e.name, e.line) for e in listed.entries] == [
        ("http://h/a/x.bin", "x.bin", 1),
        ("http://h/..%2Fy", "_y", 7),
        ("http://h/e", ".hidden", 8),
    ]
    assert listed.bad == [
        "l.txt:2: the name 'X.bin' is already used by line 1",
        "l.txt:3: the name '../../x.bin' leaves the folder",
        "l.txt:6: the name 'dir/\\x01e' holds a path separator: a NAME is a file in the folder",
    ]


def test_every_bad_line_is_reported_with_its_number() -> None:
    """Every bad line is reported with its number, the good kept."""
    text = "http://h/a\nnot-a-url\nhttp://h/b\ngopher://h/c\nhttp://h/d sha256=zz\nhttp://h/e\n"
    listed = parse_list(text.splitlines(), "l.txt")
    problems = listed.bad
    assert [e.url for e in listed.entries] == ["http://h/a", "http://h/b", "http://h/e"]
    assert [p.split(":")[1] for p in problems] == ["2", "4", "5"]
    assert problems[0] == "l.txt:2: 'not-a-url' is not a URL"
