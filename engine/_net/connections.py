"""Requests in flight, per host and in all, handed out by priority.

Theory of operation
-------------------
libcurl caps connections itself (``_transport.new_multi``), but a transfer over the
cap waits in libcurl's own queue, first come first served: a HIGH download started
behind fifty LOW ones got a connection only after every one of their waiting
requests.  So every request takes a slot here first, and libcurl's caps are never
the ones that bind.  A slot is free when its host has fewer than ``per_host`` and
the process fewer than ``total`` requests in flight; waiting requests get slots in
order of their operation's priority rank, and among equal ranks in the order they
asked.  A worker gives its slot back when its request ends and asks again for the
next one, so a download of many requests shares the host by turns with those of
its rank, and gives way to those above it, one request at a time.

All of it runs on the engine loop, so it needs no lock.  A request with nobody
waiting and a slot free takes it without a future: a small file pays two calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools

PER_HOST = 64
"""Requests in flight to one host (libcurl's own cap per host is the same)."""
TOTAL = 256
"""Requests in flight in all (libcurl's own total cap is the same)."""


@dataclasses.dataclass(order=True)
class _Waiter:
    rank: int
    turn: int
    host: str = dataclasses.field(compare=False)
    future: asyncio.Future[None] = dataclasses.field(compare=False)


class Slots:
    """One loop's requests in flight and the requests waiting for a slot."""

    def __init__(self, per_host: int = PER_HOST, total: int = TOTAL) -> None:
        self.per_host = per_host
        self.total = total
        self.busy: dict[str, int] = {}
        """Requests in flight by host."""
        self._in_flight = 0
        self._waiting: dict[str, list[_Waiter]] = {}
        """A heap a host (best rank, then first to ask): a full host's waiters are
        never looked at one by one while another host's get slots."""
        self._turns = itertools.count()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot (a cancelled one counts until it comes up)."""
        return sum(len(heap) for heap in self._waiting.values())

    async def take(self, host: str, rank: int) -> None:
        """Wait for a slot for a request to ``host`` (``rank``: smaller goes first);
        the caller gives it back with ``give`` when the request has ended."""
        if (
            host not in self._waiting
            and self._in_flight < self.total
            and self.busy.get(host, 0) < self.per_host
        ):
            self.busy[host] = self.busy.get(host, 0) + 1
            self._in_flight += 1
            return
        waiter = _Waiter(rank, next(self._turns), host, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting.setdefault(host, []), waiter)
        self._pump()
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.give(host)  # the slot came just as the wait was cancelled
            # else its future is cancelled: _pump drops it when it comes up
            raise

    def give(self, host: str) -> None:
        left = self.busy[host] - 1
        if left:
            self.busy[host] = left
        else:
            del self.busy[host]
        self._in_flight -= 1
        if self._waiting:
            self._pump()

    def _pump(self) -> None:
        """Hand free slots to the best heads of the hosts that have room."""
        while self._in_flight < self.total:
            best: list[_Waiter] | None = None
            for host, heap in list(self._waiting.items()):
                while heap and heap[0].future.done():  # cancelled while waiting
                    heapq.heappop(heap)
                if not heap:
                    del self._waiting[host]
                elif self.busy.get(host, 0) < self.per_host and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                return
            waiter = heapq.heappop(best)
            if not best:
                del self._waiting[waiter.host]
            self.busy[waiter.host] = self.busy.get(waiter.host, 0) + 1
            self._in_flight += 1
            waiter.future.set_result(None)
