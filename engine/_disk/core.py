"""The one importer of the compiled C core: a typed wrapper, one C call per method.

A ``RangeFile`` is a download's result file while it is incomplete: the partial
file ``<result>.bgtpart`` (preallocated, mapped) and the control file
``<result>.bgtctl`` (bitmap, per-block xxh3, validators), first written as
``<result>.bgtctl.new``.  Neither name can be mistaken for the complete file, which
appears only through ``finish()``'s atomic rename.  The names are chosen here, and
the core is handed every path it makes or removes.  Every failing status from C
becomes a typed exception here.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from engine._disk.tuning import DEFAULT_TUNING, Tuning
from engine._native import ffi, lib
from engine.errors import ControlFileError, InvalidRequestError, InvalidStateError, StorageError

PART_SUFFIX = ".bgtpart"
CONTROL_SUFFIX = ".bgtctl"
CONTROL_TMP_SUFFIX = CONTROL_SUFFIX + ".new"
SIDE_SUFFIXES = (PART_SUFFIX, CONTROL_SUFFIX, CONTROL_TMP_SUFFIX)
"""Endings of the files beside a result while it downloads: no result takes one, or
``x.bgtpart`` would be the partial file of ``x``."""
MIN_BLOCK_SIZE = 1 << lib.RF_MIN_BLOCK_SHIFT
MAX_BLOCK_SIZE = 1 << lib.RF_MAX_BLOCK_SHIFT

_CONTROL_MESSAGES = {
    lib.RF_E_FORMAT: "is not a bgtransfer control file",
    lib.RF_E_VERSION: "has another format version",
    lib.RF_E_CORRUPT: "has a corrupt header",
    lib.RF_E_TRUNCATED: "is truncated or has a wrong length",
    lib.RF_E_MISMATCH: "belongs to a download of another size or block size, or lost its data",
}


def part_path(result: Path) -> Path:
    """Where the incomplete data of ``result`` lives."""
    return result.with_name(result.name + PART_SUFFIX)


def control_path(result: Path) -> Path:
    """Where the bitmap and block hashes of ``result`` live."""
    return result.with_name(result.name + CONTROL_SUFFIX)


def control_tmp_path(result: Path) -> Path:
    """Where a new control file is written before it is renamed onto ``control_path``."""
    return result.with_name(result.name + CONTROL_TMP_SUFFIX)


def c_tuning(tuning: Tuning) -> Any:
    """``tuning`` as the core's ``rf_tuning`` (read by rf_open, which copies it)."""
    return ffi.new(
        "rf_tuning *",
        {
            "stage_size": tuning.stage_size,
            "max_stage_size": tuning.max_stage_size,
            "stage_memory": tuning.stage_memory,
            "stages": tuning.stages,
            "threaded_stages": tuning.threaded_stages,
            "writer_threads": tuning.writer_threads,
        },
    )


def foreign_side_file(result: Path) -> StorageError:
    """The error for a partial or control file of ``result`` that another user made,
    or that others may write: the download stops rather than trust or remove it."""
    return StorageError(
        _errno.EPERM,
        f"{result.name}{PART_SUFFIX} or {result.name}{CONTROL_SUFFIX} belongs to another "
        "user or is writable by others: not trusted",
        str(result),
    )


def check(rc: int, path: Path) -> int:
    """Return ``rc`` when it is a success (>= 0); raise the typed error it stands for."""
    if rc >= 0:
        return rc
    if rc in _CONTROL_MESSAGES:
        raise ControlFileError(f"{control_path(path)} {_CONTROL_MESSAGES[rc]}")
    if rc == lib.RF_E_FOREIGN:  # planted: never trusted, never silently replaced
        raise foreign_side_file(path)
    if rc in (lib.RF_E_RANGE, lib.RF_E_ARG):
        raise InvalidRequestError(f"{path}: offset, length or argument out of range")
    if rc == lib.RF_E_INCOMPLETE:
        raise InvalidStateError(f"{path}: not every block is complete")
    if rc == lib.RF_E_CLOSED:
        raise InvalidStateError(f"{path}: the result file is already closed")
    err = -rc
    raise StorageError(err, os.strerror(err), str(path))


def peek(result: Path) -> tuple[int, int] | None:
    """``(size, block_size)`` of the download under way for ``result``, None when there is none.

    A damaged control file raises ControlFileError: the caller decides to start over.
    """
    size = ffi.new("uint64_t *")
    shift = ffi.new("uint32_t *")
    rc = lib.rf_peek(os.fsencode(control_path(result)), size, shift)
    if rc == -_errno.ENOENT:
        return None
    check(rc, result)
    return int(size[0]), 1 << int(shift[0])


_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id: a control file opened in another boot has its blocks checked.

    ``BGTRANSFER_BOOT_ID`` stands in for the kernel's (a test simulates a reboot with
    it); "" when neither says, and then every reopen checks."""
    forced = os.environ.get("BGTRANSFER_BOOT_ID")
    if forced is not None:
        return forced
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _encode_validator(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("latin-1", "strict")
    if b"\0" in raw or len(raw) > limit:
        raise InvalidRequestError(f"{what} longer than {limit} bytes or holding NUL")
    return raw


def _writer(f: Any, result: Path) -> Callable[[int, Any], int]:
    """The data path: one C call per piece, every name bound in the closure."""
    write, from_buffer = lib.rf_write, ffi.from_buffer

    def write_at(offset: int, data: Any) -> int:
        rc: int = write(f, offset, from_buffer(data), len(data))
        return rc if rc >= 0 else check(rc, result)

    return write_at


class RangeFile:
    """An incomplete result file and its block bitmap; see csrc/rangefile.h."""

    def __init__(
        self,
        result: os.PathLike[str] | str,
        size: int,
        block_size: int,
        *,
        etag: str = "",
        last_modified: str = "",
        create: bool = True,
        staged: bool = True,
        direct: bool = True,
        writeback: bool = False,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self.result = Path(result)
        if size < 0:
            raise InvalidRequestError(f"size must be >= 0, not {size}")
        shift = block_size.bit_length() - 1
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size != 1 << shift:
            raise InvalidRequestError(
                f"block_size must be a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
            )
        ws_len = lib.rf_workspace_size(size, shift)
        self._workspace: Any = ffi.new("char[]", ws_len)
        self._f: Any = ffi.new("rf_file *")
        flags = (
            (lib.RF_OPEN_CREATE if create else 0)
            | (0 if staged else lib.RF_OPEN_UNSTAGED)
            | (lib.RF_OPEN_DIRECT if direct and staged else 0)
            | (lib.RF_OPEN_WRITEBACK if writeback and staged else 0)
        )
        check(
            lib.rf_open(
                self._f,
                self._workspace,
                ws_len,
                os.fsencode(part_path(self.result)),
                os.fsencode(control_path(self.result)),
                os.fsencode(control_tmp_path(self.result)),
                size,
                shift,
                _encode_validator(etag, lib.RF_ETAG_MAX, "ETag"),
                _encode_validator(last_modified, lib.RF_LM_MAX, "Last-Modified"),
                flags,
                c_tuning(tuning),
            ),
            self.result,
        )
        self._write = _writer(self._f, self.result)
        self.write = self._write  # type: ignore[assignment,method-assign]

    # -- what the file is -------------------------------------------------
    @property
    def size(self) -> int:
        return int(self._f.size)

    @property
    def block_size(self) -> int:
        return int(self._f.block_size)

    @property
    def nblocks(self) -> int:
        return int(self._f.nblocks)

    @property
    def created(self) -> bool:
        """True when this open started a new download rather than reopening one."""
        return bool(self._f.created)

    @property
    def staged(self) -> bool:
        """True when pieces under the stage size are gathered into runs before they are
        written."""
        return bool(self._f.staged)

    @property
    def direct(self) -> bool:
        """True when whole pages go to the disk with O_DIRECT from the core's writer
        threads (asked for, and the file system allows it); see csrc/dio.h."""
        return bool(self._f.direct)

    @property
    def threaded(self) -> bool:
        """True when full runs are written by the core's writer threads (``direct``, or
        ``writeback``): the caller's thread only copies each piece into a run."""
        return bool(self._f.threaded)

    @property
    def etag(self) -> str:
        return str(ffi.string(self._f.etag).decode("latin-1"))

    @property
    def last_modified(self) -> str:
        return str(ffi.string(self._f.last_modified).decode("latin-1"))

    @property
    def closed(self) -> bool:
        return not self._f.open

    # -- progress, counted in C --------------------------------------------
    @property
    def bytes_complete(self) -> int:
        """Bytes inside blocks whose bit is set (and hash stored).

        Bytes still staged in memory are not counted until they reach the file;
        ``drain`` (or any query) puts them there.
        """
        return int(self._f.bytes_complete)

    @property
    def bytes_written(self) -> int:
        """Every byte handed to ``write`` since open, rewrites included."""
        return int(self._f.bytes_written)

    @property
    def is_complete(self) -> bool:
        """Whether every block is complete (staged pieces are written first)."""
        return self.range_complete(0, self.size)

    # -- the data path ------------------------------------------------------
    def write(self, offset: int, data: Any) -> int:
        """Write ``data`` (any buffer) at ``offset``; return how many blocks that completed.

        A piece under the stage size may be staged (see csrc/rangefile.h), and with ``direct``
        every piece is, its run written by the core's threads: its blocks complete on a
        later call, on ``reap`` or on ``drain``.

        Replaced per instance by the closure from ``_writer`` (the hot path); this
        definition documents it for readers and type checkers.
        """
        return self._write(offset, data)

    # -- queries ---------------------------------------------------------------
    def ranges(self) -> list[tuple[int, int]]:
        """The complete ranges as sorted, merged ``(offset, length)`` pairs."""
        cap = 64
        while True:
            pairs = ffi.new("uint64_t[]", 2 * cap)
            n = check(lib.rf_ranges(self._f, pairs, cap), self.result)
            if n <= cap:
                return [(int(pairs[2 * i]), int(pairs[2 * i + 1])) for i in range(n)]
            cap = n

    def next_missing(self, offset: int = 0) -> tuple[int, int] | None:
        """The first run of missing blocks at or after ``offset`` (block-aligned start)."""
        start = ffi.new("uint64_t *")
        length = ffi.new("uint64_t *")
        check(lib.rf_next_missing(self._f, offset, start, length), self.result)
        return (int(start[0]), int(length[0])) if length[0] else None

    def drain(self) -> int:
        """Write every staged piece to the file; return how many blocks that completed."""
        return check(lib.rf_drain(self._f), self.result)

    def reap(self) -> int:
        """Account the runs the writer threads finished, without waiting; return how
        many blocks that completed (0 unless ``direct``)."""
        return check(lib.rf_reap(self._f), self.result)

    def range_complete(self, offset: int, length: int) -> bool:
        """Whether every block under ``[offset, offset + length)`` is complete."""
        return check(lib.rf_is_complete(self._f, offset, length), self.result) == 1

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the partial file from ``offset`` (complete or not).

        Bytes still staged are not in the file yet: complete blocks, or ``drain()``
        first, say that they are.

        A pread, not a view of the mapping: a view would outlive ``close()`` and
        crash the process when read afterwards.
        """
        if self.closed:
            raise InvalidStateError(f"{self.result}: the result file is already closed")
        try:
            fd = os.open(part_path(self.result), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(exc.errno or _errno.EIO, exc.strerror, str(self.result)) from exc
        try:
            return os.pread(fd, max(0, min(length, self.size - offset)), offset)
        finally:
            os.close(fd)

    # -- life cycle --------------------------------------------------------------
    def verify(self) -> int:
        """Re-hash every complete block; clear and count those whose bytes do not match."""
        return check(lib.rf_verify(self._f), self.result)

    def flush(self, durable: bool = False) -> None:
        """Write back the data, then the bitmap; ``durable`` waits for the disk."""
        check(lib.rf_flush(self._f, 1 if durable else 0), self.result)

    def checkpoint(self, durable: bool = False) -> None:
        """Hand the core's threads a checkpoint and return at once: ``durable``
        fdatasyncs the data, then the bitmap; else their write-back is started.
        Raises the error the previous checkpoint ended with, if any."""
        check(lib.rf_checkpoint(self._f, 1 if durable else 0), self.result)

    def check_boot(self, boot: str) -> int:
        """Record ``boot`` as the boot the file was last opened in; when another boot
        was recorded, first re-hash every complete block and clear those that fail (a
        power loss may have lost any byte not yet on the disk).  Returns how many were
        cleared.  Reads the whole file after a reboot: run it off the event loop."""
        raw = boot.encode("ascii", "replace")[: lib.RF_BOOT_MAX]
        return check(lib.rf_boot(self._f, raw), self.result)

    def finish(self, durable: bool = True) -> Path:
        """Rename the partial file onto the result name and drop the control file;
        ``durable``: fsync the data first and the directory after."""
        check(lib.rf_finish(self._f, os.fsencode(self.result), 1 if durable else 0), self.result)
        return self.result

    def discard(self) -> None:
        """Close and remove the partial and control files."""
        check(lib.rf_discard(self._f), self.result)

    def close(self) -> None:
        """Unmap and close; the download can be reopened later."""
        lib.rf_close(self._f)

    def __enter__(self) -> RangeFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            lib.rf_close(f)


def remove_partial(result: Path) -> None:
    """Remove a download's partial and control files, whatever state they are in;
    another user's file under one of those names is left alone, and fails the call."""
    me = os.geteuid()
    for path in (part_path(result), control_path(result)):
        try:
            if os.lstat(path).st_uid != me:
                raise foreign_side_file(result)
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(exc.errno or _errno.EIO, exc.strerror, str(path)) from exc
