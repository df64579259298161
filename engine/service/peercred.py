"""The socket: bound owner-only, and a caller's uid read from the kernel (SO_PEERCRED).

A 0600 socket in a 0700 directory already keeps other users out; the uid check on
every connection holds even when someone loosens those modes, or root connects on
another user's behalf.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def bind_owner_only(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its first instant (umask),
    replacing a stale one a killed service left."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    sock.setblocking(False)
    return sock


def answers(path: Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections at ``path`` (no HTTP, no aiohttp: the
    CLI asks this before every ``list``, and an import of aiohttp costs 100 ms)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
        return True


SD_LISTEN_FDS_START = 3


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if it passed one to us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the processes it starts
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    return sock
