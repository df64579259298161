"""Where a benchmark writes: a destination folder on tmpfs or on the disk's file system.

The same download to tmpfs and to a disk file system measures two different things:
tmpfs shows the program's own cost (no block allocation, no journal, no writeback),
the disk what a user's folder costs.  ``BGT_BENCH_TMPFS`` (default ``/dev/shm``) and
``BGT_BENCH_DISK`` (default pytest's temporary folder) choose the folders; ``-k tmpfs``
or ``-k disk`` runs one of the two.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PLACES = ("tmpfs", "disk")


def fs_type(path: Path) -> str:
    """The type of the file system holding ``path`` (``ext4``, ``tmpfs``...), from the
    mount table: the mount point that is the longest prefix of its real path."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


@contextmanager
def destination(place: str, tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on ``place`` (one of PLACES), removed afterwards; a test is skipped
    when the machine has no such file system."""
    if place == "tmpfs":
        root = Path(os.environ.get("BGT_BENCH_TMPFS", "/dev/shm"))
        if not root.is_dir() or fs_type(root) != "tmpfs":
            pytest.skip(f"{root} is not a tmpfs (BGT_BENCH_TMPFS names one)")
    else:
        root = Path(os.environ.get("BGT_BENCH_DISK") or tmp_path)
        if fs_type(root) == "tmpfs":
            pytest.skip(f"{root} is a tmpfs (BGT_BENCH_DISK names a disk's folder)")
    folder = Path(tempfile.mkdtemp(prefix="bgt-bench-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def room(path: Path, files: int, size: int) -> None:
    """Skip, rather than fill the shared disk, when ``path``'s file system lacks the
    inodes or the blocks for ``files`` files of ``size`` bytes (with a margin)."""
    st = os.statvfs(path)
    blocks = files * max(1, -(-size // st.f_frsize))
    if st.f_favail < files * 1.2 + 10_000 or st.f_bavail < blocks * 1.2 + (1 << 18):
        pytest.skip(f"{path}: no room for {files} files of {size} bytes")
