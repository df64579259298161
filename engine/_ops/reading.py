"""Reads that wait for bytes: the engine-loop side of the result streams (``_streams``).

A read parks a future here until writes complete blocks (``SegmentedDownload.on_blocks``)
or the status changes; then it looks again.  With random access it first asks the
download to fetch its offset next.
"""

from __future__ import annotations

import asyncio

from engine._ops.interfaces import EngineOperation
from engine.values import BackgroundTransferStatus

S = BackgroundTransferStatus


class Readers:
    """The reads waiting on one operation (engine loop only).  The operation passes
    itself in: holding it here made a cycle that only the collector freed."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []

    async def available(self, op: EngineOperation, offset: int, want: int) -> int:
        """Bytes present from ``offset`` (up to ``want``), waiting until there is one.

        Runs on the engine loop.  0 means the end of the result.  Raises the
        operation's error when it ends in ERROR or CANCELED first.
        """
        while True:
            if op.status is S.COMPLETED:
                return max(0, min(want, op.total_bytes - offset))
            if op.total_bytes and offset >= op.total_bytes:
                return 0
            present = self._present_from(op, offset, want)
            if present:
                return present
            if op.status in (S.ERROR, S.CANCELED):
                raise op.stored_error() if op.status is S.ERROR else op.canceled_error()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            job = op.job
            if job is not None and op.record.random_access:
                job.prioritize(offset)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                if job is not None and op.record.random_access:
                    job.reader_done(offset)

    def _present_from(self, op: EngineOperation, offset: int, want: int) -> int:
        job = op.job
        file = job.file if job is not None else None
        if file is not None and file.finishing:
            return 0  # the finishing thread owns the file: wait for COMPLETED
        if file is not None and file.rf is not None and not file.rf.closed:
            ranges = file.rf.ranges()
        elif job is None:
            ranges = op.disk_ranges()
        else:
            return 0
        for start, length in ranges:
            if start <= offset < start + length:
                return min(want, start + length - offset)
        return 0

    def wake(self) -> None:
        """Let every parked read look again."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
