"""One process at a time drives an operation: an flock on ``locks/<guid>.lock``.

Two shells running ``bgtransfer get`` for the same file, or an app and
``bgtransfer resume``, would otherwise both write the same partial file and race
on its final rename.  The lock is taken by the runner for as long as it drives the
operation and dies with its process, so a killed owner never blocks a re-attach.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class OpLock:
    def __init__(self, state_dir: Path, guid: str) -> None:
        self.path = state_dir / "locks" / f"{guid}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock for this process; False when another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self, *, forget: bool = False) -> None:
        """Let go; ``forget`` also removes the file (the operation has ended)."""
        if self._fd is None:
            return
        if forget:
            self.path.unlink(missing_ok=True)  # still ours: nobody can hold it meanwhile
        os.close(self._fd)
        self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process drives the operation right now."""
        if self._fd is not None or not self.path.exists():
            return False
        if not self.acquire():
            return True
        self.release()
        return False
