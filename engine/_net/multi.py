"""The multi handle: pycurl's AsyncCurlMulti, keeping a connection's reader between
its transfers.

libcurl stops watching a socket when its transfer ends and the connection goes back
to the pool (CURL_POLL_REMOVE), and watches it again when the next transfer takes
the connection (CURL_POLL_IN).  AsyncCurlMulti follows each call: the loop's reader
is removed and made again, and on uvloop that is a poll handle torn down and built
anew (six epoll_ctl calls and an ioctl) plus a new socket state, for every small
file.  A 5000-file mirror on tmpfs, where nothing but the engine thread counts,
spent 12% of its time on it.

Here a reader stays registered while its connection is idle ("parked"), and is
taken up again when libcurl asks for the same socket.  The loop watches a duplicate
of each socket, made once a connection, never libcurl's own descriptor: libcurl may
close an idle socket without a word (its CURLOPT_CLOSESOCKETFUNCTION documentation
says not to count on the callback), and the loop must never be left watching a
number the next socket, or any other file, is given.  A parked duplicate is let go
(reader removed, closed) when it is readable (the server closed the idle
connection, or libcurl dropped it mid-body and data still arrives: level-triggered,
it would fire every pass; an event the loop gathered before the park, for data
libcurl has read since, is no reason), when libcurl asks for its number again and it is another
socket now (inode compared), and after ``PARK_FOR`` seconds idle, so that a
connection libcurl closed is never held open for long by its duplicate.
"""

from __future__ import annotations

import asyncio
import os
import select
from typing import Any

import pycurl

from engine._runtime.loop import running_loop

PARK_FOR = 2.0
"""Seconds an idle connection's reader stays registered (a mirror reuses each
connection within milliseconds; one reused later is registered anew)."""


def _readable_now(fd: int) -> bool:
    """Whether ``fd`` has something to read (poll: select refuses descriptors past
    1023, and a process with many files open gives sockets such numbers)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Watch:
    """What the loop watches for one socket of libcurl's: a duplicate of it."""

    __slots__ = ("dup", "inode", "parked_at", "read", "write")

    def __init__(self, fd: int) -> None:
        self.dup = os.dup(fd)
        self.inode = os.fstat(self.dup).st_ino
        self.read = False
        self.write = False
        self.parked_at = 0.0  # 0: libcurl wants it (assigned), else when it was parked


class Multi(pycurl.AsyncCurlMulti):  # type: ignore[misc]  # pycurl has no stubs
    """AsyncCurlMulti whose socket callback parks idle connections' readers."""

    def __init__(self) -> None:
        super().__init__()
        self._parked: dict[int, _Watch] = {}  # by libcurl's descriptor, oldest first
        self._watches: dict[int, _Watch] = {}  # the assigned ones
        self._sweep: asyncio.TimerHandle | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        """The loop bound by the first transfer, found without asyncio's getpid call."""
        loop = self._loop
        if loop is not None and loop is running_loop():
            return loop
        bound: asyncio.AbstractEventLoop = super()._ensure_loop()
        return bound

    def _on_socket(self, what: int, fd: int, multi: Any, socketp: Any) -> None:
        w: _Watch | None = socketp
        if what == pycurl.POLL_REMOVE:
            if w is not None:
                self._release(fd, w, multi)
            return
        if what == pycurl.POLL_NONE:
            if w is not None:
                self._want(w, fd, read=False, write=False)
            return
        if self._closing:
            return
        if w is None:
            w = self._take_up(fd)
            multi.assign(fd, w)
            self._watches[fd] = w  # a parked reader taken up is registered already
        self._want(w, fd, read=bool(what & pycurl.POLL_IN), write=bool(what & pycurl.POLL_OUT))

    def _take_up(self, fd: int) -> _Watch:
        """The parked watch of ``fd`` if it is still the same socket, else a new one."""
        w = self._parked.pop(fd, None)
        if w is not None:
            try:
                same = os.fstat(fd).st_ino == w.inode
            except OSError:
                same = False
            if same:
                w.parked_at = 0.0
                return w
            self._drop(w)
        return _Watch(fd)

    def _want(self, w: _Watch, fd: int, *, read: bool, write: bool) -> None:
        loop = self._loop
        assert loop is not None, "a socket callback before the first transfer"
        if read and not w.read:
            loop.add_reader(w.dup, self._readable, fd, w)
        elif not read and w.read:
            loop.remove_reader(w.dup)
        if write and not w.write:
            loop.add_writer(w.dup, self._writable, fd, w)
        elif not write and w.write:
            loop.remove_writer(w.dup)
        w.read, w.write = read, write

    def _release(self, fd: int, w: _Watch, multi: Any) -> None:
        """libcurl let go of ``fd``: park its reader, or let it go if it had none."""
        try:  # noqa: SIM105 - contextlib.suppress costs more, twice a small file
            multi.unassign(fd)
        except pycurl.error:
            pass
        self._watches.pop(fd, None)
        if w.write:
            self._want(w, fd, read=w.read, write=False)
        if not w.read or self._closing:
            self._drop(w)
            return
        stale = self._parked.pop(fd, None)  # cannot be: libcurl assigned fd meanwhile
        if stale is not None:
            self._drop(stale)
        loop = self._loop
        assert loop is not None
        w.parked_at = loop.time()  # the loop's clock, as call_at's
        self._parked[fd] = w
        if self._sweep is None:
            self._sweep = loop.call_at(w.parked_at + PARK_FOR, self._sweep_parked)

    def _drop(self, w: _Watch) -> None:
        """Unwatch and close the duplicate (once: its number may be reused at once)."""
        if w.dup < 0:
            return
        loop = self._loop
        if loop is not None:
            if w.read:
                loop.remove_reader(w.dup)
            if w.write:
                loop.remove_writer(w.dup)
        w.read = w.write = False
        os.close(w.dup)
        w.dup = -1

    def _sweep_parked(self) -> None:
        self._sweep = None
        loop = self._loop
        if loop is None:
            return
        due = loop.time() - PARK_FOR
        for fd, w in list(self._parked.items()):
            if w.parked_at > due:
                break  # oldest first: the rest are younger
            del self._parked[fd]
            self._drop(w)
        if self._parked and not self._closing:
            oldest = next(iter(self._parked.values())).parked_at
            self._sweep = loop.call_at(oldest + PARK_FOR, self._sweep_parked)

    def _readable(self, fd: int, w: _Watch) -> None:
        if w.parked_at:  # libcurl expects nothing of an idle socket: let it go
            if not _readable_now(w.dup):
                return  # an event from before it was parked, whose data libcurl read
            if self._parked.get(fd) is w:
                del self._parked[fd]
            self._drop(w)
            return
        if w.read:
            self._drive(fd, pycurl.CSELECT_IN)

    def _writable(self, fd: int, w: _Watch) -> None:
        if w.write and not w.parked_at:
            self._drive(fd, pycurl.CSELECT_OUT)

    def kick(self) -> None:
        """Run the transfers marked to run (``curl.pause(PAUSE_CONT)`` marks one) now,
        as libcurl's timer would: a rate-limited transfer waits for it otherwise."""
        self._drive(pycurl.SOCKET_TIMEOUT, 0)

    def close_after_loop(self) -> None:
        """``aclose`` for a multi whose loop is closed: libcurl's connections and their
        duplicates are let go now, not with the process.  (``aclose`` awaits nothing;
        removing a reader from a closed asyncio or uvloop loop is a no-op.)"""
        closing = self.aclose()
        try:
            closing.send(None)
        except StopIteration:
            return
        closing.close()  # it waited for something: a pycurl this was not written for

    async def aclose(self) -> None:
        """Close the multi handle and every duplicate (its transfers are cancelled)."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().aclose()  # its POLL_REMOVEs drop the watches still assigned
        for w in [*self._parked.values(), *self._watches.values()]:
            self._drop(w)
        self._parked.clear()
        self._watches.clear()
