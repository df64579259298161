"""Passwords kept off the command line, and wiped from it when given there anyway.

Any local user reads every process's arguments (``ps``, ``/proc/PID/cmdline``).  So
a password is better read from the terminal (``-u USER``), from ``$BGTRANSFER_PASSWORD``,
or from a netrc file (curl's ``--netrc``/``--netrc-file``).  One given on the command
line (``-u USER:PASSWORD``, ``http://user:password@host/``) is overwritten with
``*`` in the process's own argument area as soon as the command starts: the kernel
shows that memory as the command line, so ``ps`` shows the stars from then on.
Linux tells a process where that area is in ``/proc/self/stat`` (arg_start,
arg_end); elsewhere nothing is wiped.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

PASSWORD_ENV = "BGTRANSFER_PASSWORD"


def _masked(arg: bytes, after_user: bool) -> bytes:
    """``arg`` with the password it carries turned to ``*`` (the same length)."""
    if after_user or arg.startswith(b"--user="):
        head, colon, secret = arg.partition(b":")
        return head + colon + b"*" * len(secret) if colon else arg
    if arg.startswith(b"-u") and not arg.startswith(b"--") and len(arg) > 2:
        return _masked(arg, True)
    if b"://" in arg and b"@" in arg:
        text = arg.decode("utf-8", "surrogateescape")
        netloc = urlsplit(text).netloc
        userinfo, at, _ = netloc.rpartition("@")
        name, sep, password = userinfo.partition(":")
        if at and sep and password:
            start = text.index(netloc) + len(name) + 1
            masked = text[:start] + "*" * len(password) + text[start + len(password) :]
            return masked.encode("utf-8", "surrogateescape")
    return arg


def masked_args(args: Iterable[bytes]) -> list[bytes]:
    """Each argument with its password (if any) turned to ``*``."""
    out: list[bytes] = []
    after_user = False
    for arg in args:
        out.append(_masked(arg, after_user))
        after_user = arg in (b"-u", b"--user")
    return out


def wipe_from_process_title() -> bool:
    """Overwrite the passwords in this process's argument area (what ``ps`` shows);
    False where it cannot be found (not Linux)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat 48, 49)
    except (OSError, IndexError, ValueError):
        return False
    if not 0 < start < end:
        return False
    area = (ctypes.c_char * (end - start)).from_address(start)
    raw = area.raw
    new = b"\0".join(masked_args(raw.split(b"\0")))
    if new != raw and len(new) == len(raw):
        ctypes.memmove(start, new, len(new))
    return True


def password_for(user: str, host: str, netrc_file: str | None) -> str | None:
    """The password of ``user`` without the command line: $BGTRANSFER_PASSWORD, else
    the netrc entry of ``host`` (when a netrc file is asked for) with that login."""
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if netrc_file is None:
        return None
    login = netrc_login(host, netrc_file)
    if login is not None and login[0] == user:
        return login[1]
    return None


def netrc_login(host: str, netrc_file: str) -> tuple[str, str] | None:
    """(login, password) for ``host`` (else ``default``) in ``netrc_file``, as curl
    reads it; None when it has no entry."""
    import netrc  # only with --netrc

    try:
        entry = netrc.netrc(os.path.expanduser(netrc_file)).authenticators(host)
    except FileNotFoundError:
        return None
    if entry is None:
        return None
    login, _, password = entry
    return login, password or ""
