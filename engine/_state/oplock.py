"""One process at a time drives an operation: a record lock in ``operations.lock``.

Two shells running ``bgtransfer get`` for the same file, or an app and
``bgtransfer resume``, would otherwise both write the same partial file and race
on its final rename.  The runner locks one byte of a shared lock file, at an
offset taken from the operation's guid, for as long as it drives the operation.
Record locks die with their process, so a killed owner never blocks a re-attach,
and they cost two fcntl calls per run: a lock file per operation cost 25% of a
5000-file mirror in file creation alone.

POSIX record locks belong to the process, not to a descriptor, and closing any
descriptor of the file drops them all: so the file is opened once per process
and state directory and never closed, and the offsets this process holds are
remembered here (testing one of our own would release it).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import ClassVar


class OpLock:
    # Keyed by the lock file's name as a str: a Path's hash is a Python call, and a
    # small file asks these twice.
    _files: ClassVar[dict[str, int]] = {}
    _held: ClassVar[set[tuple[str, int]]] = set()
    _guard: ClassVar[threading.Lock] = threading.Lock()
    _paths: ClassVar[dict[Path, str]] = {}

    def __init__(self, state_dir: Path, guid: str) -> None:
        """``guid`` as stored (its hex digits are the UUID's integer)."""
        path = self._paths.get(state_dir)
        if path is None:
            path = self._paths[state_dir] = os.path.join(state_dir, "operations.lock")
        self._path = path
        self._offset = int(guid.replace("-", ""), 16) & ((1 << 62) - 1)
        self._key = (path, self._offset)

    def _fd(self) -> int:
        fd = self._files.get(self._path)
        if fd is None:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            self._files[self._path] = fd
        return fd

    def _try(self) -> bool:
        try:
            fcntl.lockf(self._fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def acquire(self) -> bool:
        """Take the lock for this process; False when another process holds it."""
        with self._guard:
            key = self._key
            if key in self._held:
                return True
            if not self._try():
                return False
            self._held.add(key)
            return True

    def release(self) -> None:
        """Let go (the run ended, or the process is going)."""
        with self._guard:
            key = self._key
            if key not in self._held:
                return
            self._held.discard(key)
            fcntl.lockf(self._fd(), fcntl.LOCK_UN, 1, self._offset)

    def held_elsewhere(self) -> bool:
        """Whether another process drives the operation right now."""
        with self._guard:
            if self._key in self._held:
                return False
            if self._path not in self._files and not os.path.exists(self._path):
                return False  # no process ever locked anything here
            if not self._try():
                return True
            fcntl.lockf(self._fd(), fcntl.LOCK_UN, 1, self._offset)
            return False
