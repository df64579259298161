"""Whole-file checksums a caller can demand: sha256, sha1, md5, xxh3 and xxh128."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xxhash

from engine.errors import InvalidRequestError

ALGORITHMS = ("sha256", "sha1", "md5", "xxh3", "xxh128")


def new_hash(algo: str) -> Any:
    """A fresh hash object for ``algo`` (one of ALGORITHMS).  hashlib is imported on
    first use: it and OpenSSL's digests cost every command 2 ms at start-up, and a
    mirror without checksums never hashes a file."""
    if algo == "xxh3":
        return xxhash.xxh3_64()
    if algo == "xxh128":
        return xxhash.xxh3_128()
    import hashlib

    return hashlib.new(algo)


def parse(spec: str) -> tuple[str, str]:
    """``ALGO=HEX`` -> (algo, lower-case hex); InvalidRequestError when malformed."""
    algo, sep, digest = spec.partition("=")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if not sep or algo not in ALGORITHMS:
        raise InvalidRequestError(
            f"bad checksum {spec!r}: expected ALGO=HEX with ALGO one of {', '.join(ALGORITHMS)}"
        )
    size = new_hash(algo).digest_size
    if len(digest) != 2 * size or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidRequestError(f"bad checksum {spec!r}: {algo} takes {2 * size} hex digits")
    return algo, digest


def file_digest(path: Path, algo: str) -> str:
    """The hex digest of a file's content (read in 4 MiB pieces, off the engine loop)."""
    h = new_hash(algo)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return str(h.hexdigest())
