"""How ``mirror`` reads its list: whole first, or streamed as its files go.

A streamed list starts its first file as soon as its first line is read and keeps no
line once parsed.  A short list is read whole first (its count is shown from the
start), and so is one whose login comes from a netrc file (the login of the list's
hosts).  One login a command: a streamed list takes its first line's, and a later
line whose URL carries another is a bad line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable, Iterator

from engine.cli.login import netrc_file_of
from engine.cli.names import BadLine, Entry, split_login
from engine.cli.words import say

_WHOLE = 1 << 20
"""Bytes of a list read whole before the first file (some 15,000 lines, parsed in
a few tens of milliseconds); a longer one is streamed."""


def read_whole(args: argparse.Namespace) -> bool:
    """Whether the list is read whole before the first file: a short one (its count is
    shown from the start), or with a netrc file (its login is the one of the list's
    hosts).  Any other is streamed, from standard input too."""
    if netrc_file_of(args) is not None:
        return True
    if args.input == "-":
        return False
    try:
        return os.path.getsize(args.input) <= _WHOLE
    except OSError:
        return True  # iter_list has opened it already: it says what is wrong


def whole(
    items: Iterable[Entry | BadLine], bad: list[int]
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Every entry of the list, the logins their URLs carried taken out of them."""
    entries: list[Entry] = []
    logins: list[tuple[str, str]] = []  # those the URLs carried
    for entry in good(items, bad):
        entry, login = unlogged(entry)
        if login is not None:
            logins.append(login)
        entries.append(entry)
    return entries, logins


def unlogged(entry: Entry) -> tuple[Entry, tuple[str, str] | None]:
    """The entry with any ``user:password@`` taken out of its URLs, and that login
    (the first, if its URLs carry several)."""
    if "@" not in entry.url and not any("@" in u for u in entry.mirrors):
        return entry, None  # most lines: no urlsplit
    split = [split_login(u) for u in (entry.url, *entry.mirrors)]
    found = [login for _, login in split if login is not None]
    if not found:
        return entry, None
    urls = [u for u, _ in split]
    return dataclasses.replace(entry, url=urls[0], mirrors=tuple(urls[1:])), found[0]


def one_login(
    entries: Iterator[Entry],
    login: tuple[str, str] | None,
    bad: list[int],
    source: str,
    ignored: bool,
) -> Iterator[Entry]:
    """A streamed list's entries after its first: one login a command, the first
    line's (a line whose URL carries another is a bad line), unless ``-u`` gave it."""
    for entry in entries:
        entry, found = unlogged(entry)
        if found is not None and found != login and not ignored:
            say(f"{source}:{entry.line}: its URL carries a login other than the first line's")
            bad[0] += 1
            continue
        yield entry


def good(items: Iterable[Entry | BadLine], bad: list[int]) -> Iterator[Entry]:
    """The entries of the list; each bad line told (and counted in ``bad[0]``)."""
    for item in items:
        if isinstance(item, BadLine):
            say(item.message)
            bad[0] += 1
        else:
            yield item
