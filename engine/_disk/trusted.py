"""Whether a path can be trusted not to lead where another local user chose.

A symbolic link on the way to a result's folder, made by a user other than this one
(or root), could send a download into any directory of ours: ``-d /tmp/out`` where
someone else made ``/tmp/out`` a link to ``/root``.  Linux's ``protected_symlinks``
stops that only in sticky world-writable directories, so every component of the
folder is looked at: a link owned by another user is refused, never followed.  A
folder is checked once in a while per process: a mirror puts thousands of files into
one folder and pays its lookups once.
"""

from __future__ import annotations

import os
import stat
import time

from engine.errors import InvalidRequestError

_checked: dict[str, float] = {}
_AGAIN = 2.0
"""Seconds a folder found safe stays trusted without looking again."""


def check_folder(folder: str) -> None:
    """Raise InvalidRequestError when a component of ``folder`` (absolute) is a
    symbolic link owned by neither this user nor root."""
    now = time.monotonic()
    seen = _checked.get(folder)
    if seen is not None and now - seen < _AGAIN:
        return
    me = os.geteuid()
    path = "/"
    for part in folder.split("/"):
        if not part:
            continue
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except OSError:
            break  # not there yet: it will be made by this user, or the write fails
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (me, 0):
                raise InvalidRequestError(
                    f"{path} is a symbolic link owned by {user_name(st.st_uid)}, another user: "
                    "not followed (give the real folder)"
                )
            path = os.path.realpath(path)
    if len(_checked) > 256:
        _checked.clear()
    _checked[folder] = now


def user_name(uid: int) -> str:
    """The login name of ``uid``, for messages."""
    import pwd  # only on an error's path

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
