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

from pathlib import Path
from time import monotonic as _monotonic
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
        self._clear_until = 0.0
        self._clear_origin = self._clear_folder = ""

    @property
    def reserve(self) -> int:
        """Free bytes to leave on a result's file system."""
        return self._reserve.free_space_reserve

    def blocked(self, url: str, path: str) -> BackgroundTransferStatus | None:
        """Why the file of ``url`` must wait before its request (its PAUSED_* status),
        else None.  A file of the origin and folder found clear less than ``_FRESH``
        seconds ago is let go at once: a mirror asks for thousands a second, and its
        writes are checked each (``take``)."""
        now = _monotonic()
        clear = now < self._clear_until and url.startswith(self._clear_origin)
        if clear and path.startswith(self._clear_folder):
            return None
        monitor = self._monitor
        host = host_of(url)
        if not monitor.is_connected(host):
            return NO_NETWORK
        if self._unmetered_only and monitor.is_metered(host):
            return COSTED
        if not self.room(path, 0):
            return NO_ROOM
        origin = url[: url.find("/", url.find("//") + 2) + 1]
        self._clear_until = now + _FRESH
        self._clear_origin = origin if origin.endswith("/") else url
        self._clear_folder = path[: path.rfind("/") + 1]
        return None

    def offline(self, url: str) -> bool:
        """Whether the network of ``url`` is gone (a failed transfer waits, not retries)."""
        return not self._monitor.is_connected(host_of(url))

    def take(self, path: str, size: int) -> bool:
        """Whether ``size`` bytes for ``path`` fit above the reserve: if so, they are
        taken off the folder's free space (they go to the filer now)."""
        seen = self._seen(path)
        left = seen[1] - size
        if left < self._reserve.free_space_reserve:
            return False
        seen[1] = left
        return True

    def room(self, path: str, size: int) -> bool:
        """Whether ``size`` more bytes fit in the folder of ``path`` above the reserve
        (a file that never fits fails as it is written: ENOSPC, as a full one)."""
        return self._seen(path)[1] - size >= self._reserve.free_space_reserve

    def _seen(self, path: str) -> list[float]:
        """[when, free bytes] of the folder of ``path``, looked at again once stale."""
        folder = path[: path.rfind("/")] or "/"  # (absolute: posixpath.dirname is 40 bytecodes)
        seen = self._free.get(folder)
        if seen is None or _monotonic() - seen[0] > _FRESH:
            seen = self._look(folder)
        return seen

    def _look(self, folder: str) -> list[float]:
        try:
            free = free_bytes(Path(folder))
        except OSError:
            free = None  # the write itself will say what is wrong with the path
        if len(self._free) > 64:
            self._free.clear()
        # no stated capacity (/proc, some FUSE): it cannot run low
        seen = self._free[folder] = [_monotonic(), float("inf") if free is None else float(free)]
        return seen
