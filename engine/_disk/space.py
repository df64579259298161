"""Room for a file whose size the server declared, before any of it is allocated.

A download preallocates its whole file at once.  Done blindly, a declared size
could take the free space the reserve keeps (then wait forever for space its own
file took), or fill the disk.  So before a new file is made: a size larger than the
file system holds in all can never fit, and fails at once (ENOSPC); a size that
fits the file system but not its free space above the reserve waits
(PAUSED_SYSTEM_POLICY), and says how much more it needs.
"""

from __future__ import annotations

import errno
import os

from engine.errors import StorageError


class NeedsSpace(StorageError):
    """The file fits the file system, not its free space above the reserve: wait."""

    def __init__(self, path: str, size: int, missing: int) -> None:
        super().__init__(
            errno.ENOSPC,
            f"needs {_mib(missing)} more free space for its {_mib(size)}",
            path,
        )
        self.size = size
        self.missing = missing


def check_room(path: str, size: int, reserve: int) -> None:
    """Raise StorageError (ENOSPC) when ``size`` bytes can never fit the file system
    of ``path``; NeedsSpace when they do not fit above ``reserve`` free bytes now."""
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return  # the file's own creation says what is wrong with the path
    if st.f_blocks == 0:
        return  # no stated capacity (/proc, some FUSE): the writes speak for themselves
    capacity = st.f_blocks * st.f_frsize
    if size > capacity:
        raise StorageError(
            errno.ENOSPC,
            f"No space left on device: the server declares {_mib(size)}, more than the "
            f"whole file system holds ({_mib(capacity)})",
            path,
        )
    missing = size + reserve - st.f_bavail * st.f_frsize
    if missing > 0:
        raise NeedsSpace(path, size, missing)


def room_for(path: str, size: int, reserve: int) -> bool:
    """Whether ``size`` bytes fit above ``reserve`` on the file system of ``path`` now."""
    try:
        check_room(path, size, reserve)
    except NeedsSpace:
        return False
    except StorageError:
        return True  # never fits: the attempt fails for good, it does not wait
    return True


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
