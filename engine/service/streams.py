"""Result streams of operations in the service (``get_result_stream_at`` and the
random access stream of ``RemoteOperation``)."""

from __future__ import annotations

import errno
import os
from typing import Any

from engine._ops.streams import ResultStream
from engine.errors import StorageError
from engine.service import fdpass


class RemoteResultStream(ResultStream):
    """A result stream whose bytes come from the file by path, or, when this process
    cannot open it (another mount namespace, a directory it may not read), from a
    descriptor the service passes over its socket (``fdpass``), kept to the end."""

    _fd: int | None = None

    def pread(self, view: memoryview, offset: int) -> int:
        if self._fd is None:
            try:
                return super().pread(view, offset)
            except StorageError as exc:
                if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
                    raise
                op: Any = self._op  # a RemoteOperation
                socket_path = fdpass.fd_socket_path(op.link.client.paths.socket)
                try:
                    self._fd = fdpass.receive(socket_path, op.guid_str)
                except OSError:
                    raise exc from None
        return os.preadv(self._fd, [view], offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()
