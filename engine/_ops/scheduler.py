"""Which operations run now: priorities, SERIALIZED groups, and a cap on running operations.

Theory of operation
-------------------
An operation that wants to run awaits ``admit``; ``release`` gives its place back.
Waiting operations are admitted in order of (priority rank, queue position) while
fewer than ``max_active`` run; a member of a SERIALIZED group is admitted only when
no other member of its group runs and it is first of its group's waiting members
(by the same order: a HIGH member goes near the front of its group, a LOW one near
the end, as Windows documents ``BackgroundTransferPriority`` within a group).
libcurl's own caps (total and per host, ``_transport.new_multi``) bound connections
underneath; this layer keeps a thousand queued operations from opening a thousand
files and requests at once, and decides who goes first.  All of it runs on the
engine loop, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Protocol

from engine._runtime.descriptors import budget
from engine._runtime.loop import running_loop


class Schedulable(Protocol):
    @property
    def sort_key(self) -> tuple[int, int]:
        """(priority rank, queue position): smaller is admitted first."""

    @property
    def serial_group(self) -> str | None:
        """The name of the SERIALIZED group it belongs to, else None."""


@dataclasses.dataclass(eq=False)
class _Waiter:
    op: Schedulable
    future: asyncio.Future[None]


class Scheduler:
    def __init__(self, max_active: int = 32) -> None:
        self.max_active = max_active
        self._waiting: list[_Waiter] = []
        self._active: list[Schedulable] = []

    @property
    def active(self) -> int:
        return len(self._active)

    async def admit(self, op: Schedulable) -> None:
        """Wait until ``op`` may run; the caller must ``release`` it afterwards."""
        if not self._waiting and len(self._active) < self.max_active and op.serial_group is None:
            self._active.append(op)  # nobody queued before it, a place free: no wait
            return
        waiter = _Waiter(op, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self.pump()
        try:
            await waiter.future
        except BaseException:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif op in self._active:  # admitted just as the waiter was cancelled
                self.release(op)
            raise

    def release(self, op: Schedulable) -> None:
        if op in self._active:
            self._active.remove(op)
        if self._waiting:
            self.pump()

    def pump(self) -> None:
        """Admit whoever may run now; call again after a priority or queue change."""
        busy_groups = {g for op in self._active if (g := op.serial_group) is not None}
        heads: dict[str, _Waiter] = {}
        for waiter in self._waiting:
            group = waiter.op.serial_group
            if group is not None and (
                group not in heads or waiter.op.sort_key < heads[group].op.sort_key
            ):
                heads[group] = waiter
        for waiter in sorted(self._waiting, key=lambda w: w.op.sort_key):
            if len(self._active) >= self.max_active:
                break
            group = waiter.op.serial_group
            if group is not None and (group in busy_groups or heads[group] is not waiter):
                continue
            if waiter.future.done():
                continue
            self._waiting.remove(waiter)
            self._active.append(waiter.op)
            if group is not None:
                busy_groups.add(group)
            waiter.future.set_result(None)


_schedulers: dict[asyncio.AbstractEventLoop, Scheduler] = {}


def scheduler() -> Scheduler:
    """The running loop's scheduler (one engine loop per process: one scheduler)."""
    loop = running_loop()
    if loop not in _schedulers:
        _schedulers[loop] = Scheduler(budget().operations)
    return _schedulers[loop]
