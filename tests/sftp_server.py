"""An SFTP server that logs in with a password, for the tests: paramiko's SSH server.

OpenSSH's sshd (``servers.SshServer``) checks a password against the system's
accounts, and a test must not give one of them a password; paramiko's server asks
this class instead.  It serves the files under ``root`` read-only to user ``USER``
with password ``PASSWORD``, and counts the logins it let in and refused.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.sftp import SFTP_PERMISSION_DENIED

USER, PASSWORD = "tester", "s3cret pass"


class _Login(paramiko.ServerInterface):
    def __init__(self, server: PasswordSftpServer) -> None:
        self._server = server

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        if (username, password) == (USER, PASSWORD):
            self._server.logins += 1
            return AUTH_SUCCESSFUL
        self._server.refused += 1
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    def __init__(self, fd: int, flags: int) -> None:
        super().__init__(flags)
        self._fd = fd

    def read(self, offset: int, length: int) -> bytes | int:
        return os.pread(self._fd, length, offset)

    def stat(self) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self._fd))

    def close(self) -> None:
        os.close(self._fd)
        super().close()


class _Files(paramiko.SFTPServerInterface):
    """``root`` as the file system, read-only: what a download asks (stat, open, read)."""

    def __init__(self, server: Any, *args: Any, root: Path, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self._root = root

    def _real(self, path: str) -> str:
        return os.path.join(self._root, os.path.normpath("/" + path).lstrip("/"))

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO)

    lstat = stat

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        if flags & (os.O_WRONLY | os.O_RDWR):
            return SFTP_PERMISSION_DENIED
        try:
            return _Handle(os.open(self._real(path), os.O_RDONLY), flags)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO)

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path)


class PasswordSftpServer:
    """Serves ``root`` over SFTP on a loopback port; ``known_hosts`` lists its host key."""

    def __init__(self, root: Path, state: Path) -> None:
        self.logins = self.refused = 0
        self._root = root
        self._key = paramiko.RSAKey.generate(2048)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        state.mkdir(parents=True, exist_ok=True)
        self.known_hosts = state / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {self._key.get_name()} {self._key.get_base64()}\n"
        )
        self._transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: Path, user: str = "") -> str:
        """The URL of ``path`` under the root (``user@`` in it when given)."""
        at = f"{user}@" if user else ""
        return f"sftp://{at}127.0.0.1:{self.port}/{path.relative_to(self._root)}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            transport = paramiko.Transport(conn)
            transport.add_server_key(self._key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Files, root=self._root)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Login(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def close(self) -> None:
        self._listener.close()
        for transport in self._transports:
            transport.close()
