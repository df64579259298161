"""Whether a state directory can be trusted: this user's, and writable by nobody else.

What its database says is downloaded, from where and to where, runs with this user's
rights, so a directory or database another user could have written is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from engine._disk.trusted import user_name
from engine.errors import StorageError


def check_trusted(state_dir: Path, db: Path) -> None:
    """Refuse a state directory another user could have written: what its database
    says is downloaded, from where and to where, with this user's rights.  The
    directory must be this user's and writable by nobody else (as ssh asks of
    ~/.ssh); the database and its -wal/-shm files, where they exist, regular files
    of this user, never links."""
    me = os.geteuid()
    st = os.stat(state_dir)
    if st.st_uid != me:
        raise untrusted(state_dir, f"owned by {user_name(st.st_uid)}, not by this user")
    if st.st_mode & 0o022:
        raise untrusted(
            state_dir,
            f"writable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod go-w {state_dir}",
        )
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise untrusted(path, "a symbolic link, never followed")
        if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
            raise untrusted(path, f"not a file of this user (owner {user_name(st.st_uid)})")


def untrusted(path: Path, why: str) -> StorageError:
    return StorageError(errno.EPERM, f"state directory not trusted: {path} is {why}", str(path))
