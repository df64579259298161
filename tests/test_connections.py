"""Connection slots (engine/_net/connections.py): caps, priority order, turns, cancels.

On a real event loop with real tasks; the requests are tasks that hold a slot
until the test lets them go.
"""

from __future__ import annotations

import asyncio

from engine._net.connections import Slots


class _Requests:
    """Tasks that each take a slot, note it, and hold it until released."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.order: list[str] = []
        self._done: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def ask(self, name: str, host: str, rank: int) -> None:
        self._done[name] = asyncio.Event()

        async def request() -> None:
            await self.slots.take(host, rank)
            self.order.append(name)
            try:
                await self._done[name].wait()
            finally:
                self.slots.give(host)

        self.tasks[name] = asyncio.ensure_future(request())

    def end(self, name: str) -> None:
        self._done[name].set()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_host_gets_at_most_per_host_and_the_process_at_most_total() -> None:
    async def go() -> None:
        r = _Requests(Slots(per_host=2, total=3))
        for name in ("a1", "a2", "a3"):
            r.ask(name, "a", 1)
        r.ask("b1", "b", 1)
        r.ask("c1", "c", 1)
        await _settle()
        assert r.order == ["a1", "a2", "b1"]  # a is full at 2, the process at 3
        assert r.slots.busy == {"a": 2, "b": 1}
        r.end("a1")
        await _settle()
        assert r.order[3:] == ["a3"]  # asked before c1: its turn came first
        r.end("b1")
        await _settle()
        assert r.order[4:] == ["c1"]
        for name in ("a2", "a3", "c1"):
            r.end(name)
        await asyncio.gather(*r.tasks.values())
        assert r.slots.busy == {}
        assert r.slots.waiting == 0

    asyncio.run(go())


def test_a_freed_slot_goes_to_the_best_rank_then_to_whoever_asked_first() -> None:
    """HIGH (rank 0) before DEFAULT before LOW, whatever the order they asked in;
    a request that asks again goes behind those of its rank already waiting."""

    async def go() -> None:
        r = _Requests(Slots(per_host=1))
        r.ask("running", "h", 2)
        await _settle()
        r.ask("low1", "h", 2)
        r.ask("default", "h", 1)
        r.ask("low2", "h", 2)
        r.ask("high", "h", 0)
        await _settle()
        for name in ("running", "high", "default", "low1"):
            r.end(name)
            await _settle()
        r.ask("low1-again", "h", 2)  # its next request
        r.end("low2")
        await _settle()
        r.end("low1-again")
        await asyncio.gather(*r.tasks.values())
        assert r.order == ["running", "high", "default", "low1", "low2", "low1-again"]

    asyncio.run(go())


def test_a_full_host_does_not_hold_back_another_hosts_requests() -> None:
    async def go() -> None:
        r = _Requests(Slots(per_host=1, total=10))
        r.ask("a1", "a", 0)
        await _settle()
        r.ask("a2", "a", 0)  # waits for a, and outranks b
        r.ask("b1", "b", 2)
        await _settle()
        assert r.order == ["a1", "b1"]
        for name in ("a1", "a2", "b1"):
            r.end(name)
            await _settle()
        await asyncio.gather(*r.tasks.values())
        assert r.order == ["a1", "b1", "a2"]

    asyncio.run(go())


def test_a_cancelled_wait_takes_nothing_and_a_slot_granted_as_it_is_cancelled_comes_back() -> None:
    async def go() -> None:
        slots = Slots(per_host=1)
        r = _Requests(slots)
        r.ask("holder", "h", 1)
        await _settle()
        r.ask("gives-up", "h", 0)
        r.ask("next", "h", 1)
        await _settle()
        r.tasks["gives-up"].cancel()
        await _settle()
        r.end("holder")
        await _settle()
        assert r.order == ["holder", "next"]  # the cancelled waiter was skipped
        assert slots.busy == {"h": 1}

        r.end("next")
        await asyncio.gather(*r.tasks.values(), return_exceptions=True)
        assert slots.busy == {}

        # granted and cancelled in the same pass: the slot is given back, not lost
        await slots.take("h", 1)
        late = asyncio.ensure_future(slots.take("h", 0))
        await _settle()
        assert slots.waiting == 1
        slots.give("h")  # the slot goes to the waiter; its task has not run yet
        assert slots.busy == {"h": 1}
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        assert late.cancelled()
        assert slots.busy == {}
        assert slots.waiting == 0

    asyncio.run(go())
