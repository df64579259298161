"""Result files by descriptor, for a client that cannot open the path the service writes.

A client in another mount namespace (a container, a sandbox) or behind a directory
it may not read still reads a result: it asks on a second socket beside the main
one (same directory, 0600, the same uid check), sending an operation's GUID on one
line, and receives an open read-only descriptor of the partial file (or of the final
file once renamed) with SCM_RIGHTS.  The descriptor stays valid across the final
rename (the same inode), so one descriptor serves a stream to its end.  aiohttp has
no way to pass descriptors, hence this small protocol of its own: a reply is ``b"+"``
with the descriptor, or ``b"-"`` and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from engine._disk.core import part_path
from engine.service.peercred import bind_owner_only, peer_uid

MAX_LINE = 64


def fd_socket_path(main: Path) -> Path:
    return main.with_name(main.name + ".fd")


async def serve(path: Path, result_of: Callable[[str], Path]) -> asyncio.AbstractServer:
    """Answer descriptor requests at ``path``; ``result_of(guid)`` names the result
    (raising LookupError for an unknown operation)."""
    sock = bind_owner_only(path)
    uid = os.getuid()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw: socket.socket = writer.get_extra_info("socket")
        try:
            if peer_uid(raw) != uid:
                writer.write(b"-this service serves its own user only\n")
                return
            line = await asyncio.wait_for(reader.readline(), 10)
            guid = line[:MAX_LINE].decode("ascii", "replace").strip()
            try:
                fd = _open_result(result_of(guid))
            except (LookupError, OSError) as exc:
                writer.write(f"-{exc}\n".encode())
                return
            try:
                with socket.socket(fileno=os.dup(raw.fileno())) as conn:
                    conn.setblocking(True)
                    socket.send_fds(conn, [b"+"], [fd])
            finally:
                os.close(fd)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    return await asyncio.start_unix_server(one, sock=sock)


def _open_result(result: Path) -> int:
    for path in (part_path(result), result):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{result}: no partial or final file")


def receive(path: Path, guid: str, timeout: float = 10.0) -> int:
    """A descriptor of ``guid``'s result, from the service at ``path`` (OSError when refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(guid.encode("ascii") + b"\n")
        msg, fds, _flags, _addr = socket.recv_fds(sock, 512, 1)
        if msg[:1] == b"+" and fds:
            return fds[0]
        for fd in fds:
            os.close(fd)
        raise PermissionError(msg[1:].decode(errors="replace").strip() or "refused")
