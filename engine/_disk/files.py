"""Creating, fsyncing and renaming small result files, in the C core's own threads.

A mirror of many small files spends most of its system time creating and renaming
files, and each such call made from a Python thread gives up the GIL and waits to
take it back behind the engine loop (up to a switch interval, 5 ms, per call: a
thread doing them beside a busy Python thread ran 60x slower).  The C filer
(``csrc/filer.h``) does that work in threads that never touch Python.  Each event
loop has a channel whose eventfd it watches like a socket: one callback takes every
finished job and settles the futures waiting for them, with no thread in between.

The filer knows no file name of its own: this module names the partial file it
creates, and the control file it removes beside a stale partial file.  A new
operation does not look for an earlier run's files; a partial file already under
its name is the leftover of an operation no state database knows, and its control
file must not outlive the result.

The filer is the process's.  It starts with the sync threads and stage size of the
first download that finishes a file through it, and starts more sync threads when a
later one asks for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from engine._disk.core import (
    CONTROL_SUFFIX,
    PART_SUFFIX,
    control_path,
    foreign_side_file,
    part_path,
)
from engine._disk.tuning import DEFAULT_TUNING, Tuning
from engine._native import ffi, lib
from engine._runtime.loop import running_loop
from engine._runtime.once import PerProcess
from engine.errors import StorageError

_BATCH = 256
_PART = os.fsencode(PART_SUFFIX)
_CONTROL = os.fsencode(CONTROL_SUFFIX)
_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
"""What ``os.fsencode`` does to a str, in one C call."""


class _Channel:
    """One loop's end of the filer: the futures waiting for its jobs."""

    def __init__(self, f: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._f = f
        self.ch = lib.fl_channel_new()
        if self.ch == ffi.NULL:
            raise OSError("the filer's channel could not be made")
        self.waiting: dict[int, tuple[asyncio.Future[None], os.PathLike[str] | str]] = {}
        self._ids = ffi.new("uint64_t[]", _BATCH)
        self._results = ffi.new("int64_t[]", _BATCH)
        loop.add_reader(lib.fl_channel_fd(self.ch), self._take)
        weakref.finalize(loop, lib.fl_channel_close, f, self.ch)

    def _take(self) -> None:
        n = lib.fl_take(self._f, self.ch, self._ids, self._results, _BATCH)
        for i in range(n):
            future, result = self.waiting.pop(int(self._ids[i]))
            rc = int(self._results[i])
            if future.cancelled():
                continue
            if rc < 0:
                future.set_exception(storage_error(-rc, result))
            else:
                future.set_result(None)


class Filer:
    """The process's C filer, started by the first job."""

    def __init__(self) -> None:
        self._f: Any = ffi.NULL
        self._syncers = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Channel] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[asyncio.AbstractEventLoop, _Channel] | None = None
        """The loop of the last job and its channel (a mirror's every file, one loop):
        kept strongly, which keeps a closed loop's channel until another loop's job."""

    async def finish(
        self,
        fd: int,
        result: os.PathLike[str] | str,
        body: bytes | bytearray = b"",
        offset: int = 0,
        *,
        durable: bool = True,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        """Write ``body`` at ``offset`` (the end of the file, kept in memory until now),
        fsync and close ``fd`` (the partial file), rename it to ``result``, and fsync
        the directory (without ``durable``: through the page cache, no fsync at all).
        ``fd`` is closed whatever happens; -1: there is no partial file yet, and the
        filer creates it (``body`` is then the whole file), replacing a stale one and
        removing the control file beside it."""
        await self.start(fd, result, body, offset, durable=durable, tuning=tuning)

    def start(
        self,
        fd: int,
        result: os.PathLike[str] | str,
        body: bytes | bytearray = b"",
        offset: int = 0,
        *,
        durable: bool = True,
        tuning: Tuning = DEFAULT_TUNING,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[None]:
        """``finish`` as a future of ``loop`` (the running one), settled when the job is
        done: a caller that drives many files by callbacks needs no task a file."""
        f = self._f if tuning.sync_threads <= self._syncers else self._start(tuning)
        if loop is None:
            loop = running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            channel = last[1]
        else:
            found = self._channels.get(loop)
            if found is None:
                found = self._channels[loop] = _Channel(f, loop)
            channel = found
            self._last = (loop, channel)
        future: asyncio.Future[None] = loop.create_future()
        job = next(self._ids)
        name = result.encode(*_FS) if type(result) is str else os.fsencode(result)
        data = ffi.from_buffer(body) if body else ffi.NULL  # copied before fl_finish returns
        part = name + _PART
        stale = name + _CONTROL if fd < 0 else ffi.NULL  # only a created file finds one
        flags = lib.FL_DURABLE if durable else 0
        size = len(body)
        rc = lib.fl_finish(f, channel.ch, job, fd, part, name, stale, data, size, offset, flags)
        if rc != 0:
            if fd >= 0:
                os.close(fd)
            raise storage_error(-rc, result)
        channel.waiting[job] = (future, result)
        return future

    def _start(self, tuning: Tuning) -> Any:
        """The C filer, with at least ``tuning.sync_threads`` sync threads running."""
        with self._lock:
            if self._f == ffi.NULL:
                f = lib.fl_new(tuning.sync_threads, tuning.stage_size)
                if f == ffi.NULL:
                    raise MemoryError("the filer's threads could not be started")
                self._f = f
            running = lib.fl_syncers(self._f, tuning.sync_threads)
            if running < 0:
                raise MemoryError("the filer's sync threads could not be started")
            self._syncers = max(self._syncers, tuning.sync_threads)  # as many as it could
            return self._f


_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


def create_partial(result: Path) -> int:
    """A new empty partial file for ``result``, made in the caller's thread, under the
    filer's rule: a stale one, or a planted link, is unlinked first and never written
    through, and the control file beside a stale one goes too; another user's fails
    (StorageError).  For a plain file whose body no longer fits in memory."""
    path = part_path(result)
    try:
        return os.open(path, _CREATE, 0o666)
    except FileExistsError:
        if os.lstat(path).st_uid != os.geteuid():  # planted by another user
            raise foreign_side_file(result) from None
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            control_path(result).unlink()
        return os.open(path, _CREATE, 0o666)


def storage_error(err: int, result: os.PathLike[str] | str) -> StorageError:
    """The job's failure; EEXIST: the partial file's name is another user's (the
    filer creates it with O_EXCL and never removes another user's file)."""
    if err == errno.EEXIST:
        return foreign_side_file(Path(result))
    return StorageError(err, os.strerror(err), str(result))


_filer = PerProcess(Filer)


def filer() -> Filer:
    """The process's filer, started on first use."""
    return _filer.get()
