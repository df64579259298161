"""Where a download's bytes go: one sink a file, chosen once the file is decided.

Theory of operation
-------------------
The first response decides the file (``engine._download.checks``), or a control file
an earlier run left does; one sink is then chosen for it (``plain_sink``,
``range_sink``, ``resume``), and every byte of every request goes through its
``write(offset, view)`` until ``finish()`` puts the complete file under its name.
``write`` returns the blocks it completed (a reader may wait for them); the view dies
when it returns, so every sink has copied or written it by then.  A download that
stops calls ``keep()`` when what arrived is worth resuming, and ``close()`` in any
case.

- ``MemorySink``: a body of known size that fits in ``HOLD``, held in memory whole;
  the C filer creates, writes, syncs and renames it as it is finished, so the engine
  loop makes no write for a small file.
- ``PlainFileSink``: a body of unknown length, a larger one the first response
  carries whole, or any from a server without ranges: no bitmap; ``HOLD`` bytes at a
  time are held, the run before written to the partial file, and the last run goes to
  the filer with the finish.
- ``RangeSink``: a file fetched in ranges: the C core's range file (bitmap, block
  hashes, pieces staged into runs its writer threads write), which survives a crash.
  Its ``write`` is the core's own call: no Python layer between libcurl and C.

A plain body is always asked from where it reaches (or from zero, without ranges).
When it stops part-way, ``keep`` puts what arrived, once, into a range file of
``KEPT_BLOCK`` blocks, which the next run resumes like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

from engine._disk.checksum import file_digest, new_hash
from engine._disk.core import (
    RangeFile,
    boot_id,
    part_path,
    peek,
    remove_partial,
)
from engine._disk.files import create_partial, filer
from engine._disk.space import check_room
from engine._disk.tuning import Tuning
from engine.config import TransferConfig
from engine.errors import ControlFileError, InvalidStateError, StorageError, TransferError

HOLD = 256 << 10
"""Bytes of a plain body kept in memory, then written by the C filer with O_DIRECT as
the file is finished: the engine loop makes no write for a small file, and its fsync
has no data left to write back.  Past this, written by the loop, a run at a time."""

KEPT_BLOCK = 16 << 10
"""Block size of the bitmap a stopped plain file is kept with: a resume fetches again
at most this much of what had arrived."""

_DURABLE = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="bgtransfer-durable")
"""Finishing and reopening a range file (fsync, rename, verify) off the engine loop;
plain files go through the C filer (``engine._disk.files``) instead."""


class Sink(Protocol):
    """One way a download's bytes reach the disk."""

    def write(self, offset: int, view: memoryview, /) -> int:
        """Put ``view`` at ``offset`` before returning; the blocks that completed."""

    @property
    def reached(self) -> int:
        """Bytes that arrived: where a plain body reaches; a range file's progress."""

    @property
    def complete(self) -> bool:
        """Every byte of a file of known size is there."""

    def hold(self, start: int, end: int | None) -> bytearray | None:
        """The buffer a request's pieces from ``start`` to ``end`` may be appended to
        as they come (the rest of its body fits in memory), else None."""

    def reap(self) -> bool:
        """Whether the core's threads completed blocks since the last write."""

    def checkpoint(self, durable: bool) -> None:
        """Hand the data and the bitmap written so far to the disk (write-back)."""

    async def digest(self, algo: str) -> str:
        """The ``algo`` checksum of the complete file, before it is renamed."""

    async def finish(self, durable: bool) -> int:
        """Put the complete file under its name (``durable``: synced first); its length."""

    def keep(self, etag: str, last_modified: str, on_resumable: Callable[[], None]) -> None:
        """Keep what arrived for the next run to resume (``on_resumable`` is called
        just before a control file is made)."""

    def close(self) -> None:
        """Let go of the file (what ``keep`` kept stays)."""


class MemorySink:
    """A body of known size within ``HOLD``, held in memory until the filer writes it."""

    def __init__(self, name: str, size: int, config: TransferConfig) -> None:
        self.name = name
        self.size = size
        self.config = config
        self.held = bytearray()

    def write(self, offset: int, view: memoryview) -> int:
        held = self.held
        if offset != len(held):
            if offset > len(held):
                raise InvalidStateError(f"{self.name}: a gap before {offset} in a plain body")
            del held[offset:]  # without ranges, a retry starts again from zero
        held += view
        return 0

    @property
    def reached(self) -> int:
        return len(self.held)

    @property
    def complete(self) -> bool:
        return len(self.held) >= self.size

    def hold(self, start: int, end: int | None) -> bytearray | None:
        return self.held if start == len(self.held) else None

    def reap(self) -> bool:
        return False

    def checkpoint(self, durable: bool) -> None:
        """Nothing is on the disk before the finish."""

    async def digest(self, algo: str) -> str:
        h = new_hash(algo)
        h.update(self.held)
        return str(h.hexdigest())

    async def finish(self, durable: bool) -> int:
        held, self.held = self.held, bytearray()
        tuning = Tuning.of(self.config)
        await filer().finish(-1, self.name, held, 0, durable=durable, tuning=tuning)
        return len(held)

    def keep(self, etag: str, last_modified: str, on_resumable: Callable[[], None]) -> None:
        kept = (self.held, etag, last_modified)
        keep_small(Path(self.name), self.size, *kept, self.config, on_resumable)

    def close(self) -> None:
        self.held = bytearray()


class PlainFileSink:
    """A plain body that may not fit in memory: ``HOLD`` bytes held at a time, the
    runs before written to the partial file (made when the first run is written)."""

    def __init__(self, name: str, size: int | None, config: TransferConfig) -> None:
        self.name = name
        self.size = size
        self.config = config
        self.held = bytearray()
        """The body from ``held_at`` on, kept until it ends or passes ``HOLD``."""
        self.held_at = 0
        self.fd = -1

    def write(self, offset: int, view: memoryview) -> int:
        held = self.held
        if offset == self.held_at + len(held) and len(held) + len(view) <= HOLD:
            held += view  # the filer writes it, past the page cache, when the file ends
        else:
            self._spill()
            self._pwrite(view, offset)
            self.held_at = offset + len(view)
        return 0

    @property
    def reached(self) -> int:
        return self.held_at + len(self.held)

    @property
    def complete(self) -> bool:
        return self.size is not None and self.held_at + len(self.held) >= self.size

    def hold(self, start: int, end: int | None) -> bytearray | None:
        at = self.held_at
        fits = end is not None and start == at + len(self.held) and end - at <= HOLD
        return self.held if fits else None

    def reap(self) -> bool:
        return False

    def checkpoint(self, durable: bool) -> None:
        """The runs written are the partial file's; the finish syncs them."""

    async def digest(self, algo: str) -> str:
        if self.fd < 0:
            h = new_hash(algo)
            h.update(self.held)
            return str(h.hexdigest())
        self._spill()  # what is held is the end of the file
        return await asyncio.to_thread(file_digest, part_path(Path(self.name)), algo)

    async def finish(self, durable: bool) -> int:
        fd, self.fd = self.fd, -1
        held, self.held = self.held, bytearray()
        tuning = Tuning.of(self.config)
        await filer().finish(fd, self.name, held, self.held_at, durable=durable, tuning=tuning)
        return self.held_at + len(held)

    def keep(self, etag: str, last_modified: str, on_resumable: Callable[[], None]) -> None:
        if self.size is None:
            return
        data = bytearray()
        try:
            if self.fd >= 0 and self.held_at:
                data += os.pread(self.fd, self.held_at, 0)
        except OSError:
            data.clear()
        if len(data) != self.held_at:
            return  # the spilled part is not all there: nothing safe to keep
        data += self.held
        self.close()
        kept = (data, etag, last_modified)
        keep_small(Path(self.name), self.size, *kept, self.config, on_resumable)

    def close(self) -> None:
        self.held = bytearray()  # nothing resumes a plain file: it starts again
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _pwrite(self, data: memoryview | bytearray, offset: int) -> None:
        try:
            if self.fd < 0:
                self.fd = create_partial(Path(self.name))
            while data:
                n = os.pwrite(self.fd, data, offset)
                data, offset = data[n:], offset + n
        except OSError as exc:
            raise StorageError(exc.errno, exc.strerror, self.name) from exc

    def _spill(self) -> None:
        """Write what is held in memory to the partial file."""
        held = self.held
        if held:
            self._pwrite(held, self.held_at)
            self.held_at += len(held)
            self.held = bytearray()


class RangeSink:
    """A file fetched in ranges: the C core's range file."""

    write: Callable[[int, memoryview], int]

    def __init__(self, rf: RangeFile) -> None:
        self.rf = rf
        self.write = rf.write  # the core's call itself (see RangeFile.write)
        self.base = self.seen = rf.bytes_complete
        """Bytes complete when it was opened (``bytes_written`` counts from there), and
        the progress last counted (kept once the file is closed)."""

    @property
    def reached(self) -> int:
        rf = self.rf
        if not rf.closed:
            # What arrived, not only whole blocks: the core counts every byte it is
            # handed (rf_write), so a slow download moves at each tick instead of a
            # block (or a direct-I/O run) at a time.  A piece written again after a
            # broken request counts twice until its block completes; never past size.
            self.seen = max(rf.bytes_complete, min(rf.size, self.base + rf.bytes_written))
        return self.seen

    @property
    def complete(self) -> bool:
        return self.rf.is_complete

    def hold(self, start: int, end: int | None) -> bytearray | None:
        return None

    def reap(self) -> bool:
        rf = self.rf
        return not rf.closed and rf.reap() > 0

    def checkpoint(self, durable: bool) -> None:
        if not self.rf.closed:
            self.rf.checkpoint(durable)

    async def digest(self, algo: str) -> str:
        return await asyncio.to_thread(file_digest, part_path(self.rf.result), algo)

    async def finish(self, durable: bool) -> int:
        finish = functools.partial(self.rf.finish, durable)
        await asyncio.get_running_loop().run_in_executor(_DURABLE, finish)
        return self.rf.size

    def keep(self, etag: str, last_modified: str, on_resumable: Callable[[], None]) -> None:
        """Its partial and control files are what a resume starts from."""

    def close(self) -> None:
        self.rf.close()


def plain_sink(name: str, size: int | None, config: TransferConfig) -> Sink:
    """The sink of a plain file: in memory when its size is known to fit, else a
    partial file written a run at a time."""
    if size is not None and size <= HOLD:
        return MemorySink(name, size, config)
    return PlainFileSink(name, size, config)


def range_sink(
    result: Path,
    size: int,
    config: TransferConfig,
    validators: tuple[str, str],
    on_resumable: Callable[[], None],
) -> RangeSink:
    """The sink of a new file fetched in ranges; ``on_resumable`` is called just before
    its control file is made."""
    remove_partial(result)  # a stale partial file is not written through
    on_resumable()
    rf = open_range_file(result, size, config, *validators, create=True)
    rf.check_boot(boot_id())  # a new file: no block to check, the boot noted
    return RangeSink(rf)


async def resume(result: Path, config: TransferConfig) -> RangeSink | None:
    """The range file an earlier run left, verified on a thread; None when there was
    none or it was damaged (then removed: the download starts afresh)."""
    loop = asyncio.get_running_loop()
    rf = await loop.run_in_executor(_DURABLE, _reopen, result, config)
    return None if rf is None else RangeSink(rf)


def _reopen(result: Path, config: TransferConfig) -> RangeFile | None:
    """The RangeFile an earlier run left, its blocks checked when the machine rebooted
    since (a power loss may have lost what its bits say); None when damaged."""
    try:
        found = peek(result)
        if found is not None:
            rf = open_range_file(result, found[0], config, "", "", create=False, block=found[1])
    except ControlFileError:  # damaged, or its data file is gone: nothing to resume
        found = None
    if found is None:
        remove_partial(result)
        return None
    try:
        rf.check_boot(boot_id())
    except BaseException:
        rf.close()
        raise
    return rf


def open_range_file(
    result: Path,
    size: int,
    config: TransferConfig,
    etag: str,
    last_modified: str,
    *,
    create: bool,
    block: int = 0,
) -> RangeFile:
    """The result file written the way ``config.durability`` asks: "full" with
    O_DIRECT (where allowed), "normal" into the page cache, unless ``direct_io`` says
    otherwise; both from the core's writer threads."""
    direct = config.direct_io
    return RangeFile(
        result,
        size,
        block or config.block_size,
        etag=etag,
        last_modified=last_modified,
        create=create,
        direct=config.durable if direct is None else direct,
        writeback=True,
        tuning=Tuning.of(config),
    )


def keep_small(
    result: Path,
    size: int,
    data: bytes | bytearray,
    etag: str,
    last_modified: str,
    config: TransferConfig,
    on_resumable: Callable[[], None],
    block: int = KEPT_BLOCK,
) -> bool:
    """A plain file stopped part-way keeps what arrived: its bytes go into a range file
    of ``block`` bytes a block, which the next run resumes from.  At most
    ``first_request`` bytes are copied, once, as the download stops; never on the
    data path.  On a failure nothing is kept, as before: the next run starts again
    (False)."""
    try:
        remove_partial(result)
        on_resumable()
        tuning = Tuning.of(config)
        with RangeFile(
            result, size, block, etag=etag, last_modified=last_modified, tuning=tuning
        ) as rf:
            rf.write(0, data)
            rf.drain()
            rf.flush(durable=False)
    except (OSError, TransferError):
        with contextlib.suppress(OSError, TransferError):
            remove_partial(result)
        return False
    return True


class Seed(NamedTuple):
    """The first range of a file of ``size`` bytes, received before the file was known
    to be large (a bulk job's small-file request), with the validators it came with."""

    size: int
    data: bytes | bytearray
    etag: str
    last_modified: str


def hand_over(result: Path, seed: Seed, config: TransferConfig, reserve: int) -> bool:
    """``seed`` kept as the range file the download of ``result`` resumes from: its
    bytes are not fetched again.  A size without room above ``reserve`` is left to the
    download (it waits, or fails, as any other): False, as when the write fails."""
    try:
        check_room(os.fspath(result), seed.size, reserve)
    except StorageError:
        return False
    size, data, etag, modified = seed
    block = config.block_size  # the largest block the seed fills whole, so none is fetched again
    while block > KEPT_BLOCK and len(data) % block:
        block //= 2
    return keep_small(result, size, data, etag, modified, config, _nothing, block)


async def plant(result: Path, seed: Seed, config: TransferConfig, reserve: int) -> bool:
    """``hand_over`` on the threads that reopen range files (megabytes to write)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DURABLE, hand_over, result, seed, config, reserve)


def _nothing() -> None:
    pass
