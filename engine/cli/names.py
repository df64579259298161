"""Result names for the command line: from a URL or a mirror list, made safe to write.

A name from the network must never leave the target directory or surprise a shell:
no ``..``, no absolute paths, no separators, no control characters, no leading dot
or dash, no ending of the engine's side files (``.bgtpart``...: a ``_`` is added);
collisions get ``.1``, ``.2``... before the extension.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from engine._disk.checksum import parse
from engine._disk.core import SIDE_SUFFIXES
from engine.errors import InvalidRequestError

_MAX_NAME = 200
_UNSAFE = frozenset("/\\\0")


def safe_name(raw: str, fallback: str = "download.bin") -> str:
    """One path component derived from ``raw`` that stays where it is put.

    A mirror list names thousands of files: a plain name (printable, NFC already, no
    separator) takes the checks below without a loop over its characters."""
    text = raw if unicodedata.is_normalized("NFC", raw) else unicodedata.normalize("NFC", raw)
    if not text.isprintable() or not _UNSAFE.isdisjoint(text):
        text = "".join("_" if (not ch.isprintable() or ch in _UNSAFE) else ch for ch in text)
    text = text.strip().lstrip(".-").strip()
    if text in ("", ".", ".."):
        return fallback
    encoded = text.encode()
    if len(encoded) > _MAX_NAME:
        text = encoded[:_MAX_NAME].decode(errors="ignore")
    if text.endswith(SIDE_SUFFIXES):  # the engine's own names beside another file
        text += "_"
    return text


def name_from_url(url: str) -> str:
    return safe_name(_last_segment(urlsplit(url).path))


def _last_segment(path: str) -> str:
    """The path's last segment, decoded, as ``Path(path).name`` has it (a trailing
    slash or ``.`` is no segment of its own), without a Path for the common case."""
    leaf = path.rpartition("/")[2]
    if leaf in ("", "."):
        leaf = Path(path).name
    return unquote(leaf)


def split_login(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without the ``user:password@`` it carries, and that pair (decoded, as
    curl decodes it); ``url`` and None when it carries no password.  The engine stores
    an operation's URL and refuses one with a password: the pair goes to the
    downloader's credential, which stays in memory (as curl's ``-u`` would)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    return url.replace(parts.netloc, host, 1), (
        unquote(parts.username or ""),
        unquote(parts.password),
    )


def output_path(output: str | None, url: str, *, create: bool) -> Path:
    """The result file of ``get URL -o OUTPUT``: OUTPUT itself, or the URL's name in it
    when it is a folder.  A trailing slash always means a folder (as for cp and curl):
    one that does not exist is made with ``--create-dirs``, else refused; so is a
    file's missing folder."""
    if not output:
        return Path(os.path.abspath(name_from_url(url)))
    path = Path(os.path.abspath(output))
    folder = output.endswith(("/", os.sep)) or path.is_dir()
    where = path if folder else path.parent
    if not where.is_dir():
        if os.path.lexists(where):
            raise InvalidRequestError(f"{where}: not a directory")
        if not create:
            raise InvalidRequestError(f"{where}: no such directory (--create-dirs makes it)")
        os.makedirs(where, exist_ok=True)
    return path / name_from_url(url) if folder else path


@dataclasses.dataclass(frozen=True)
class Entry:
    url: str
    name: str
    checksum: str | None
    line: int = 0
    """Its line in the list (1 for the first)."""
    mirrors: tuple[str, ...] = ()
    """More URLs of the same file (after the first on its line)."""


SCHEMES = frozenset({"http", "https", "ftp", "ftps", "sftp"})


def _entry(number: int, fields: list[str]) -> Entry:
    """One line's entry; ValueError saying what is wrong with it."""
    urls, rest = [fields[0]], fields[1:]
    while rest and "://" in rest[0]:  # more URLs of the same file (TAB-separated, as aria2's)
        urls.append(rest.pop(0))
    checksum = rest.pop() if rest and "=" in rest[-1] else None
    for url in urls:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"{url!r} is not a URL")
        if parts.scheme.lower() not in SCHEMES:
            raise ValueError(f"{url!r}: {parts.scheme} is not http, https, ftp, ftps or sftp")
    if checksum is not None:
        parse(checksum)  # its own ValueError says what is wrong
    name = " ".join(rest) if rest else _last_segment(urlsplit(urls[0]).path)
    return Entry(urls[0], safe_name(name), checksum, number, tuple(urls[1:]))


@dataclasses.dataclass
class MirrorList:
    """A mirror list read whole: what to download, and what to tell about it."""

    entries: list[Entry]
    """The good lines, their names made unique."""
    bad: list[str]
    """``SOURCE:N: what is wrong``, for each line that cannot be downloaded."""
    renamed: list[str]
    """``SOURCE:N: ...``, for each entry whose name another line took first."""


def parse_list(lines: Iterable[str], source: str = "list") -> MirrorList:
    """A mirror list, one ``URL [URL...] [NAME] [ALGO=HEX]`` a line, the URLs of one
    file separated by TABs (as in aria2's input files) or spaces (blank lines and
    ``#`` comments skipped), read whole (see ``MirrorList``).

    The one place a list is parsed: a list streamed line by line replaces it whole."""
    entries, problems = [], []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            entries.append(_entry(number, fields))
        except ValueError as exc:
            problems.append(f"{source}:{number}: {exc}")
    unique, renamed = unique_names(entries)
    notices = [
        f"{source}:{entry.line}: the name is taken by line {first}: saved as {entry.name}"
        for entry, first in renamed
    ]
    return MirrorList(unique, problems, notices)


def read_list(source: str) -> MirrorList:
    """``parse_list`` of the file ``source`` (``-``: standard input); one that cannot
    be read is bad usage."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{source}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_list(text.splitlines(), source)


def unique_names(entries: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, int]]]:
    """Give colliding names (case-insensitively) a ``.N`` suffix before the extension;
    the entries renamed, each with the line of the entry that has its name.

    The next N to try is kept for each name, so ten thousand equal names cost ten
    thousand tries, not fifty million."""
    seen: dict[str, int] = {}
    next_n: dict[str, int] = {}
    out, renamed = [], []
    for entry in entries:
        name = entry.name
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = name, "", ""
        key = name.lower()
        n = next_n.get(key, 0)
        while name.lower() in seen:
            n += 1
            name = f"{stem}.{n}{dot}{ext}"
        next_n[key] = n
        seen[name.lower()] = entry.line
        if name is entry.name:
            out.append(entry)
        else:
            moved = dataclasses.replace(entry, name=name)
            out.append(moved)
            renamed.append((moved, seen[entry.name.lower()]))
    return out, renamed
