"""The shared ticker (engine/_runtime/ticker.py) on a real event loop."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

from engine._runtime.ticker import Ticker, ticker


async def _until(done: Callable[[], bool]) -> None:
    """Wait for ``done`` (a busy VM may stall the loop: no fixed sleep is long enough)."""
    for _ in range(2000):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not within 10 s")


def test_members_tick_from_one_timer_which_stops_when_they_leave() -> None:
    async def go() -> None:
        calls: list[str] = []
        t = ticker(0.01)
        started = asyncio.get_running_loop().time()
        t.join("a", lambda: calls.append("a"))
        t.join("b", lambda: calls.append("b"))
        await _until(lambda: calls.count("a") >= 3)
        took = asyncio.get_running_loop().time() - started
        assert calls.count("a") <= took / 0.01 + 1  # never faster than its interval
        assert calls.count("a") == calls.count("b")  # one timer ticks both
        t.leave("a")
        t.leave("b")
        assert t._timer is None  # nobody left: no timer keeps the loop busy
        seen = len(calls)
        await asyncio.sleep(0.03)
        assert len(calls) == seen

    asyncio.run(go())


def test_a_member_that_raises_stops_alone_and_is_reported() -> None:
    async def go() -> None:
        reported: list[object] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        calls: list[str] = []

        def bad() -> None:
            raise RuntimeError("broken")

        t = ticker(0.01)
        t.join("bad", bad)
        t.join("good", lambda: calls.append("good"))
        await _until(lambda: calls.count("good") >= 3)
        assert len(reported) == 1
        assert isinstance(reported[0], RuntimeError)
        assert calls.count("good") >= 3
        t.leave("good")

    asyncio.run(go())


def test_a_member_may_leave_another_during_a_round() -> None:
    async def go() -> None:
        calls: list[str] = []
        t = ticker(0.01)

        def first() -> None:
            calls.append("first")
            t.leave("second")

        t.join("first", first)
        t.join("second", lambda: calls.append("second"))
        await _until(lambda: "first" in calls)
        assert "second" not in calls
        t.leave("first")

    asyncio.run(go())


def test_each_loop_has_its_own_tickers_and_a_closed_loop_is_let_go() -> None:
    """The lookup remembers the last loop asked about, weakly: a second loop (another
    thread's, or the next asyncio.run) never gets the first one's ticker, and the
    first loop is not kept alive by having been asked about."""

    async def mine() -> Ticker:
        assert ticker(0.01) is ticker(0.01)
        return ticker(0.01)

    first_loop = asyncio.new_event_loop()
    first = first_loop.run_until_complete(mine())
    first_loop.close()
    gone = weakref.ref(first_loop)
    del first_loop
    gc.collect()
    assert gone() is None
    second = asyncio.run(mine())
    assert second is not first
