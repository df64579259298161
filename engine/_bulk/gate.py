"""When a small file of a bulk job may go on: the conditions a full operation waits for.

Theory of operation
-------------------
A full operation looks, before each attempt, at the network (is there one? is it
metered, under an UNRESTRICTED_ONLY cost policy?) and at the free space of its folder
(above the reserve?), and waits in a PAUSED_* status until they allow it
(``engine._ops.runner``).  A small file of a bulk job has no operation: the runner asks
``Gate.blocked`` before each request and before its body is written, and a blocked
file waits (its slot kept, its row showing the pause) for the next look, every
``poll_interval`` seconds; it never fails for it.  The answers cost a file little: the
network monitor caches its own looks, and the free space of a folder is looked at
every quarter second at most, the bytes handed to the filer since then taken off it
(a thousand files a second would otherwise pass a stale look by a gigabyte).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from engine._ops.validate import host_of
from engine._runtime.conditions import NetworkMonitor, free_bytes
from engine.values import BackgroundTransferCostPolicy, BackgroundTransferStatus

S = BackgroundTransferStatus
NO_NETWORK, COSTED, NO_ROOM = S.PAUSED_NO_NETWORK, S.PAUSED_COSTED_NETWORK, S.PAUSED_SYSTEM_POLICY
_FRESH = 0.25
"""Seconds a look at a folder's free space answers for (as ``Settings``' own)."""


class Reserve(Protocol):
    """Where the free-space reserve is read (the downloader's settings: it may change)."""

    @property
    def free_space_reserve(self) -> int: ...


class Gate:
    """The conditions of one bulk job's small files (see the module)."""

    def __init__(
        self,
        monitor: NetworkMonitor,
        cost_policy: BackgroundTransferCostPolicy,
        reserve: Reserve,
    ) -> None:
        self._monitor = monitor
        self._unmetered_only = cost_policy is BackgroundTransferCostPolicy.UNRESTRICTED_ONLY
        self._reserve = reserve
        self._free: dict[str, list[float]] = {}
        """folder -> [when looked, free bytes then less those handed out since]."""

    @property
    def reserve(self) -> int:
        """Free bytes to leave on a result's file system."""
        return self._reserve.free_space_reserve

    def blocked(self, url: str, path: str) -> BackgroundTransferStatus | None:
        """Why the file of ``url`` must wait before its request (its PAUSED_* status),
        else None."""
        monitor = self._monitor
        host = host_of(url)
        if not monitor.is_connected(host):
            return NO_NETWORK
        if self._unmetered_only and monitor.is_metered(host):
            return COSTED
        return None if self.room(path, 0) else NO_ROOM

    def offline(self, url: str) -> bool:
        """Whether the network of ``url`` is gone (a failed transfer waits, not retries)."""
        return not self._monitor.is_connected(host_of(url))

    def took(self, path: str, size: int) -> None:
        """``size`` bytes of ``path`` are handed to the filer: off the folder's free space."""
        seen = self._free.get(os.path.dirname(path))
        if seen is not None:
            seen[1] -= size

    def room(self, path: str, size: int) -> bool:
        """Whether ``size`` more bytes fit in the folder of ``path`` above the reserve
        (a file that never fits fails as it is written: ENOSPC, as a full one)."""
        folder = os.path.dirname(path)
        now = time.monotonic()
        seen = self._free.get(folder)
        if seen is None or now - seen[0] > _FRESH:
            try:
                free = free_bytes(Path(folder))
            except OSError:
                return True  # the write itself will say what is wrong with the path
            if len(self._free) > 64:
                self._free.clear()
            # no stated capacity (/proc, some FUSE): it cannot run low
            seen = self._free[folder] = [now, float("inf") if free is None else float(free)]
        return seen[1] - size >= self._reserve.free_space_reserve
