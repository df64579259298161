"""Result names for the command line: from a URL or a mirror list, made safe to write.

A name from the network must never leave the target directory or surprise a shell:
no ``..``, no absolute paths, no separators, no control characters, no leading dot
or dash; collisions get ``.1``, ``.2``... before the extension.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

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


@dataclasses.dataclass(frozen=True)
class Entry:
    url: str
    name: str
    checksum: str | None


def parse_list(text: str) -> list[Entry]:
    """One entry a line: ``URL [NAME] [ALGO=HEX]``; blank lines and ``#`` comments skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        url, rest = fields[0], fields[1:]
        checksum = rest.pop() if rest and "=" in rest[-1] else None
        parts = urlsplit(url)
        if not parts.scheme:
            raise ValueError(f"line {number}: {url!r} is not a URL")
        name = " ".join(rest) if rest else _last_segment(parts.path)
        entries.append(Entry(url, safe_name(name), checksum))
    return entries


def unique_names(entries: list[Entry]) -> list[Entry]:
    """Give colliding names (case-insensitively) a ``.N`` suffix before the extension."""
    seen: set[str] = set()
    out = []
    for entry in entries:
        name = entry.name
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = name, "", ""
        n = 0
        while name.lower() in seen:
            n += 1
            name = f"{stem}.{n}{dot}{ext}"
        seen.add(name.lower())
        out.append(entry if name is entry.name else dataclasses.replace(entry, name=name))
    return out
