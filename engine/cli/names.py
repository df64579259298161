"""Result names for the command line, and mirror lists read as a stream.

A name from the network must never leave the target directory or surprise a shell:
no ``..``, no absolute paths, no separators, no control characters, no leading dot
or dash, no ending of the engine's side files (``.bgtpart``...: a ``_`` is added).
A name written on a list's line is checked, never rewritten: one that is not a
plain file of the folder, or that a line before took, makes a bad line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from engine._disk.checksum import parse
from engine._disk.core import SIDE_SUFFIXES
from engine.cli.seen import NameSet
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


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A line of a mirror list that cannot be downloaded: skipped, told to the user."""

    line: int
    message: str
    """``SOURCE:N: what is wrong``."""

    def __str__(self) -> str:
        return self.message


SCHEMES = frozenset({"http", "https", "ftp", "ftps", "sftp"})
MAX_LINE = 1 << 16
"""Longest line read (bytes): a list without newlines cannot fill the memory."""


def _check_url(url: str) -> str:
    """The path of ``url``; ValueError saying, in a user's words, why it cannot be
    downloaded."""
    try:
        parts = urlsplit(url)
        host_ok = _plain_host(parts.netloc)
        if host_ok is None:  # login, IPv6 or odd port: urllib's own parse of it
            parts.port  # noqa: B018  (raises on a port out of range or not a number)
            host_ok = bool(parts.hostname)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{url!r} is not a URL")
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"{url!r}: {parts.scheme} is not http, https, ftp, ftps or sftp")
    if not host_ok:
        raise ValueError(f"{url!r} names no host")
    if not url.isprintable():
        raise ValueError(f"{url!r} holds a control character")
    return parts.path


def _plain_host(netloc: str) -> bool | None:
    """Whether ``HOST[:PORT]`` names a host and a port in range; None for a netloc
    with a login or an IPv6 address.  ``hostname`` and ``port`` parse it again each
    time: a third of a line's cost."""
    if "@" in netloc or "[" in netloc:
        return None
    host, _, port = netloc.partition(":")
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None  # urllib's words for what is wrong with it
    return bool(host)


def checked_name(raw: str) -> str:
    """A NAME written on a list's line, as the file it will be (NFC); ValueError when
    it is not one file of the folder.  A name the user wrote is never rewritten: a
    mirror that saved ``../x`` as ``_.._x`` would leave them looking for a file that
    is not there.  A leading dot or dash is kept: the file is always reached by its
    path in the folder."""
    name = raw if unicodedata.is_normalized("NFC", raw) else unicodedata.normalize("NFC", raw)
    if name.startswith(("/", "\\")):
        raise ValueError(f"the name {name!r} is an absolute path: a NAME is a file in the folder")
    if ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"the name {name!r} leaves the folder")
    if name == ".":
        raise ValueError("the name '.' is the folder itself")
    if "/" in name or "\\" in name:
        raise ValueError(
            f"the name {name!r} holds a path separator: a NAME is a file in the folder"
        )
    if not name.isprintable():
        raise ValueError(f"the name {name!r} holds a control character")
    if len(name.encode()) > _MAX_NAME:
        raise ValueError(f"the name {name[:20]!r}... is longer than {_MAX_NAME} bytes")
    if name.endswith(SIDE_SUFFIXES):
        raise ValueError(
            f"the name {name!r} ends like the files bgtransfer keeps beside a download "
            "(.bgtpart, .bgtctl)"
        )
    return name


def _entry(number: int, fields: list[str]) -> Entry:
    """One line's entry; ValueError saying what is wrong with it."""
    urls, rest = [fields[0]], fields[1:]
    while rest and "://" in rest[0]:  # more URLs of the same file (TAB-separated, as aria2's)
        urls.append(rest.pop(0))
    checksum = rest.pop() if rest and "=" in rest[-1] else None
    path = _check_url(urls[0])
    for url in urls[1:]:
        _check_url(url)
    if checksum is not None:
        parse(checksum)  # its own ValueError says what is wrong
    # a name from the URL is made safe, as wget does: no one chose it
    name = checked_name(" ".join(rest)) if rest else safe_name(_last_segment(path))
    return Entry(urls[0], name, checksum, number, tuple(urls[1:]))


def parse_lines(
    lines: Iterable[str | bytes | None], source: str = "list"
) -> Iterator[Entry | BadLine]:
    """Each line's ``Entry``, or its ``BadLine``, as the lines come: one
    ``URL [URL...] [NAME] [ALGO=HEX]`` a line, the URLs of one file separated by TABs
    (as in aria2's input files) or spaces; blank lines and ``#`` comments skipped.
    A line is bytes when read from a file (UTF-8 expected), None when too long.

    A name a line before took (compared case-insensitively) makes a bad line, not a
    renamed file: a name the user wrote or the URL gave is where they will look."""
    seen = NameSet()
    for number, raw in enumerate(lines, 1):
        if raw is None:
            yield BadLine(number, f"{source}:{number}: longer than {MAX_LINE} bytes")
            continue
        if isinstance(raw, bytes):
            try:  # a BOM before the first line, as Windows' Notepad writes, is no part of it
                raw = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield BadLine(number, f"{source}:{number}: not UTF-8 text")
                continue
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            entry = _entry(number, fields)
        except ValueError as exc:
            yield BadLine(number, f"{source}:{number}: {exc}")
            continue
        first = seen.add(entry.name, number)
        if first:
            yield BadLine(
                number,
                f"{source}:{number}: the name {entry.name!r} is already used by line {first}",
            )
        else:
            yield entry


def iter_list(source: str) -> Iterator[Entry | BadLine]:
    """``parse_lines`` of the file ``source`` (``-``: standard input), read line by
    line as the consumer asks: the first entry of a list of millions comes at once,
    and no line is kept after it is parsed.  A file that cannot be opened is bad
    usage, raised here, before the first line."""
    if source == "-":
        return parse_lines(_read_lines(sys.stdin.buffer, source), source)
    try:
        stream = open(source, "rb")  # noqa: SIM115  (closed by the generator)
    except OSError as exc:
        raise InvalidRequestError(f"{source}: {exc.strerror or exc}") from None
    return parse_lines(_read_lines(stream, source, close=True), source)


def _read_lines(stream: BinaryIO, source: str, close: bool = False) -> Iterator[bytes | None]:
    """The stream's lines as they arrive; None for one over ``MAX_LINE`` bytes, whose
    rest is read and dropped."""
    try:
        while raw := stream.readline(MAX_LINE + 1):
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass
                yield None
            else:
                yield raw
    except OSError as exc:
        raise InvalidRequestError(f"{source}: {exc.strerror or exc}") from None
    finally:
        if close:
            stream.close()


@dataclasses.dataclass
class MirrorList:
    """A mirror list read whole, for a caller that needs all of it before it starts
    (a cluster splits it into shards): the good lines, and what is wrong with the others."""

    entries: list[Entry]
    bad: list[str]
    """``SOURCE:N: what is wrong``, for each line that cannot be downloaded."""


def collect(items: Iterable[Entry | BadLine]) -> MirrorList:
    listed = MirrorList([], [])
    for item in items:
        if isinstance(item, BadLine):
            listed.bad.append(item.message)
        else:
            listed.entries.append(item)
    return listed


def parse_list(lines: Iterable[str], source: str = "list") -> MirrorList:
    """``parse_lines``, collected."""
    return collect(parse_lines(lines, source))


def read_list(source: str) -> MirrorList:
    """``iter_list``, collected."""
    return collect(iter_list(source))
