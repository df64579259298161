"""The file one download writes: what its first response decided, and its sink.

Theory of operation
-------------------
Until a response decides it, a download knows nothing of its file.  The first
verdict that decides (``engine._download.checks``) is adopted here: the size, the
validators the control file can keep (whole, or none), whether ranges work, and so
the sink the bytes go to (``engine._download.sinks``).  A control file an earlier run
left decides it instead (``resume``).  Content that changed forgets it all
(``forget``): the next response decides again.  Once complete, ``finish`` renames it
into place; a download that stops ``keep``s what a later run can resume, then
``close``s.  The object is the ``Known`` the checks read: plain attributes, no call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine._disk.core import RangeFile, remove_partial
from engine._disk.space import check_room
from engine._download.checks import storable
from engine._download.sinks import Sink, plain_sink, range_sink, resume
from engine._net.transport import ResponseHead
from engine.config import TransferConfig

Put = Callable[[int, memoryview], int]
"""A sink's ``write``: bytes at an offset, the blocks they completed."""


class DownloadFile:
    """The decided file of one download and where its bytes go."""

    # Class-level defaults, set on the instance only when they change: a mirror makes
    # one of these a file.
    size: int | None = None
    """Its length; None until a response states it (or for good: ``bytes a-b/*``)."""
    etag = ""
    last_modified = ""
    ranges_ok = True
    """Ranges work: requests may ask for any part of it."""
    plain = False
    """A plain file (small, of unknown length, or without ranges): no bitmap."""
    body_ended = False
    """A body of unknown length ended: a response ran to its end (or a 416 said so)."""
    rf: RangeFile | None = None
    """The range file of a file fetched in ranges (readers read it while it fills)."""
    sink: Sink | None = None
    """Where its bytes go, once it is decided."""
    finishing = False
    """True once it is handed to the thread that finishes it."""
    finished = False
    _seen = 0
    """The bytes that had arrived when its sink was closed."""
    _path: Path | None = None

    def __init__(self, name: str, config: TransferConfig) -> None:
        self.name = name
        self.config = config

    @property
    def path(self) -> Path:
        """Its final name (made a Path when first asked: a small file never is)."""
        path = self._path
        if path is None:
            path = self._path = Path(self.name)
        return path

    @property
    def reached(self) -> int:
        """Bytes that arrived: where a plain body reaches, a range file's progress."""
        sink = self.sink
        return self._seen if sink is None else sink.reached

    @property
    def complete(self) -> bool:
        sink = self.sink
        if sink is None:
            return False
        return sink.complete or (self.plain and self.body_ended)

    def adopt(
        self,
        head: ResponseHead,
        size: int | None,
        ranges: bool,
        reserve: int,
        on_resumable: Callable[[], None],
    ) -> Put:
        """The first response decided the file: choose its sink (room for it checked
        first, ``reserve`` bytes left free); its ``write``."""
        self.size = size
        self.etag = storable(head.get("ETag"), 256)
        self.last_modified = storable(head.get("Last-Modified"), 128)
        if not ranges:
            self.ranges_ok = False
        self.body_ended = False
        if self.sink is not None:  # unknown length, a new response: its file starts again
            self.sink.close()
            self.sink = None
        first = self.config.first_request
        if size is not None and size > first:
            check_room(self.name, size, reserve)  # before any of it is written
        if size is None or size <= first or not ranges:
            # Unknown length, a body the first response carries whole, or a server
            # without ranges: a plain file, no bitmap (a broken small body costs at
            # most first_request again).  Without ranges nothing can be resumed, so no
            # control file says there is: the next run asks once, as for a new file,
            # instead of probing with ranges the server ignores.
            self.plain = True
            sink: Sink = plain_sink(self.name, size, self.config)
        else:
            self.plain = False
            validators = (self.etag, self.last_modified)
            ranged = range_sink(self.path, size, self.config, validators, on_resumable)
            self.rf = ranged.rf
            sink = ranged
        self.sink = sink
        return sink.write

    async def resume(self, on_resumable: Callable[[], None]) -> Put | None:
        """The file an earlier run left, verified on a thread; None when a damaged
        control file was removed (the first response decides afresh)."""
        sink = await resume(self.path, self.config)
        if sink is None:
            return None
        on_resumable()
        rf = self.rf = sink.rf
        self.sink = sink
        self.size, self.etag, self.last_modified = rf.size, rf.etag, rf.last_modified
        return sink.write

    def forget(self) -> None:
        """Start over: nothing of it is kept, and the next response decides again."""
        self.close()
        remove_partial(self.path)
        self.rf, self.size = None, None
        self.etag = self.last_modified = ""
        self.ranges_ok = True

    async def digest(self, algo: str) -> str:
        """The checksum of the complete file before it is renamed: a plain file still
        held whole in memory is hashed there, anything else on disk (a thread)."""
        assert self.sink is not None
        return await self.sink.digest(algo)

    async def finish(self) -> None:
        """Rename onto the final name; with durability "full", fsync the file first and
        the directory after."""
        self.finishing = True  # readers leave the result file to the finishing thread
        assert self.sink is not None
        self.size = await self.sink.finish(self.config.durable)  # (unknown length: now known)

    def keep(self, ranged: bool, on_resumable: Callable[[], None]) -> None:
        """A plain file paused (or broken off) keeps what arrived for the next run to
        resume from, where it can be asked for by range (``ranged``); a restart from
        zero is left to servers without ranges."""
        sink, size = self.sink, self.size
        if (
            sink is None
            or not self.plain
            or not (ranged and self.ranges_ok)
            or size is None
            or not 0 < sink.reached < size
            or self.finishing
        ):
            return
        sink.keep(self.etag, self.last_modified, on_resumable)

    def close(self) -> None:
        sink = self.sink
        if sink is not None:
            self._seen = sink.reached
            sink.close()
            self.sink = None
        self.plain = False
