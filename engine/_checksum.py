"""Whole-file checksums a caller can demand: sha256, sha1, md5, xxh3 and xxh128."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from engine.errors import InvalidRequestError

ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "xxh3": xxhash.xxh3_64,
    "xxh128": xxhash.xxh3_128,
}


def parse(spec: str) -> tuple[str, str]:
    """``ALGO=HEX`` -> (algo, lower-case hex); InvalidRequestError when malformed."""
    algo, sep, digest = spec.partition("=")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if not sep or algo not in ALGORITHMS:
        raise InvalidRequestError(
            f"bad checksum {spec!r}: expected ALGO=HEX with ALGO one of {', '.join(ALGORITHMS)}"
        )
    size = ALGORITHMS[algo]().digest_size
    if len(digest) != 2 * size or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidRequestError(f"bad checksum {spec!r}: {algo} takes {2 * size} hex digits")
    return algo, digest


def file_digest(path: Path, algo: str) -> str:
    """The hex digest of a file's content (read in 4 MiB pieces, off the engine loop)."""
    h = ALGORITHMS[algo]()
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return str(h.hexdigest())
