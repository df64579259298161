"""Names the command line derives from URLs and mirror lists: one safe component each."""

from __future__ import annotations

import pytest

from engine.cli.names import name_from_url, parse_list, safe_name, unique_names


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
    text = (
        "http://h/a/x.bin\nhttp://h/b/X.bin\nhttp://h/c ../../x.bin\n# c\n\nhttp://h/d dir/\x01e\n"
    )
    entries = unique_names(parse_list(text))
    assert [e.name for e in entries] == ["x.bin", "X.1.bin", "_.._x.bin", "dir__e"]
    assert [e.url for e in entries] == [
        "http://h/a/x.bin",
        "http://h/b/X.bin",
        "http://h/c",
        "http://h/d",
    ]


def test_a_line_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_list("http://h/a\nnot-a-url\n")
