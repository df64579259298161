"""One digest of everything the C core is built from, compiled into it.

The tests compare it with the tree they run from, so a change to ``csrc/`` or the
bindings that was never reinstalled fails the run instead of testing the old core.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_PATTERNS = ("csrc/**/*.c", "csrc/**/*.h", "bindings/*.cdef", "bindings/*.py")


def source_digest(root: Path) -> str:
    """sha256 over the C core's sources and the bindings, by relative path and content."""
    digest = hashlib.sha256()
    files = sorted({path for pattern in _PATTERNS for path in root.glob(pattern)})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
