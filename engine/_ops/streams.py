"""Reading a result while it downloads: ``get_result_stream_at`` and the random access stream.

Theory of operation
-------------------
A read asks the engine loop how many bytes are present from its position
(``EngineOperation.available``): the answer comes from the block bitmap, so only
bytes whose block is complete (and hashed) are ever returned.  When none are, the
engine parks the read until blocks complete; with ``is_random_access_required`` it
first points a connection at the offset (``SegmentedDownload.prioritize``).  The bytes
themselves are read with ``pread`` from the partial file (then, once renamed, the
final file): the page cache makes them visible the moment the bit is set, and no
mapping whose lifetime the engine controls is ever touched from the reader's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import io
import os
import threading
from typing import Any

from engine._disk.core import part_path
from engine._ops.interfaces import EngineOperation
from engine._runtime.loop import engine_loop
from engine.errors import InvalidStateError, StorageError, TransferError, TransferTimeoutError


class ResultStream(io.RawIOBase):
    """A readable (and, from the random access reference, seekable) view of the result.

    ``read``/``readinto`` block until at least one byte at the position is there (or
    ``timeout`` seconds pass: TransferTimeoutError), and return what is contiguous
    from it; b"" only at the end of the result.  ``read_async``/``readinto_async``
    are the asyncio counterparts.  ``cancel_pending_read()`` (from any thread) makes
    a blocked read raise InterruptedError, so a new seek takes effect at once.
    """

    def __init__(
        self, op: EngineOperation, position: int, *, timeout: float | None, seekable: bool
    ) -> None:
        super().__init__()
        if position < 0:
            raise ValueError(f"position must be >= 0, not {position}")
        self._op = op
        self._pos = position
        self._seekable = seekable
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[int] | None = None

    # -- io.RawIOBase -------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        return self._pos

    @property
    def size(self) -> int:
        """The result's size once the first response told it, else 0."""
        return self._op.progress.total_bytes_to_receive

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("get_result_stream_at streams do not seek")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.closed:
            raise ValueError("read from a closed stream")
        if not len(view):
            return 0
        if threading.current_thread() is engine_loop().thread:
            raise InvalidStateError("a blocking read on the engine thread: use read_async")
        n = self._wait(self._pos, len(view))
        return self._take(view, n)

    # -- asyncio ---------------------------------------------------------------------
    async def readinto_async(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        future = engine_loop().submit(self._op.available(self._pos, len(view)))
        try:
            n = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TransferError:  # the download's own error, a TransferTimeoutError too
            raise
        except asyncio.TimeoutError:
            raise self._timeout_error() from None
        return self._take(view, n)

    async def read_async(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is contiguous when -1... up to 1 MiB a call)."""
        buf = bytearray(size if size >= 0 else 1 << 20)
        n = await self.readinto_async(buf)
        return bytes(buf[:n])

    # -- control ---------------------------------------------------------------------
    def cancel_pending_read(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.cancel()

    # -- internals -------------------------------------------------------------------
    def _wait(self, offset: int, want: int) -> int:
        future = engine_loop().submit(self._op.available(offset, want))
        with self._lock:
            self._pending = future
        try:
            return future.result(self.timeout)
        except TransferError:  # the download's own error, a TransferTimeoutError too
            raise
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._timeout_error() from None
        except concurrent.futures.CancelledError:
            raise InterruptedError(errno.EINTR, "the pending read was cancelled") from None
        finally:
            with self._lock:
                self._pending = None

    def _timeout_error(self) -> TransferTimeoutError:
        return TransferTimeoutError(
            f"{self._op.result_file}: byte {self._pos} did not arrive within {self.timeout} s",
            guid=self._op.guid,
        )

    def _take(self, view: memoryview, n: int) -> int:
        if n == 0:
            return 0
        got = self.pread(view[:n], self._pos)
        self._pos += got
        return got

    def pread(self, view: memoryview, offset: int) -> int:
        """Read from the partial file, or from the final one once it was renamed."""
        result = self._op.result_file
        for path in (part_path(result), result):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(exc.errno, exc.strerror, str(path)) from exc
            try:
                return os.preadv(fd, [view], offset)
            finally:
                os.close(fd)
        raise StorageError(errno.ENOENT, "the result file is gone", str(result))
