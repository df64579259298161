"""A served tree of many tiny files for a list of a million lines, made once and kept.

File ``i`` is ``f{i:07d}.bin`` in the folder ``{i // 1000:04d}`` (a thousand a folder,
so that no directory holds a million entries), 1 KiB: its own name and a newline,
then a fixed block.  Every file differs from every other, so a misplaced or swapped
file cannot pass the check, and the check needs no copy of the tree: ``verify``
rebuilds each content from its name.

The tree is made once per count under ``BGT_BENCH_CACHE`` (default ``.cache`` beside
this file) in a folder of its own, renamed into place when complete: an interrupted
build is never taken for a tree.  A million files take about 4 GB and a million
inodes; ``places.room`` skips the benchmark where the file system lacks them.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from places import room

SIZE = 1024
SHARD = 1000
_BLOCK = random.Random(1_000_000).randbytes(SIZE)


def name(i: int) -> str:
    return f"f{i:07d}.bin"


def served_path(i: int) -> str:
    """File ``i``'s path in the tree, as in its URL."""
    return f"{i // SHARD:04d}/{name(i)}"


def content(i: int) -> bytes:
    head = f"{name(i)}\n".encode()
    return head + _BLOCK[len(head) :]


def cache() -> Path:
    return Path(os.environ.get("BGT_BENCH_CACHE") or Path(__file__).resolve().parent / ".cache")


def tree(count: int) -> Path:
    """The folder serving ``count`` files, made now if no earlier run left it."""
    root = cache()
    final = root / f"list-{count}"
    if (final / "complete").exists():
        return final / "tree"
    root.mkdir(parents=True, exist_ok=True)
    room(root, count, SIZE)
    building = root / f".list-{count}.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    (building / "tree").mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for shard in range(0, count, SHARD):
        folder = building / "tree" / f"{shard // SHARD:04d}"
        folder.mkdir()
        at = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(shard, min(shard + SHARD, count)):
                fd = os.open(name(i), flags, 0o644, dir_fd=at)
                try:
                    os.write(fd, content(i))
                finally:
                    os.close(fd)
        finally:
            os.close(at)
    (building / "complete").touch()
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    return final / "tree"


def verify(folder: Path, count: int) -> tuple[int, int, int]:
    """Files of ``folder`` byte-exact, missing or wrong, and others there (side
    files, names no line gave): ``(exact, missing_or_wrong, extra)``."""
    present = set(os.listdir(folder))
    exact = 0
    at = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            if name(i) not in present:
                continue
            fd = os.open(name(i), os.O_RDONLY, dir_fd=at)
            try:
                got = os.read(fd, SIZE + 1)
            finally:
                os.close(fd)
            exact += got == content(i)
    finally:
        os.close(at)
    extra = len(present) - sum(1 for i in range(count) if name(i) in present)
    return exact, count - exact, extra
