"""The shared ticker (engine/_ticker.py) on a real event loop."""

from __future__ import annotations

import asyncio

from engine._ticker import ticker


def test_members_tick_from_one_timer_which_stops_when_they_leave() -> None:
    async def go() -> None:
        calls: list[str] = []
        t = ticker(0.01)
        t.join("a", lambda: calls.append("a"))
        t.join("b", lambda: calls.append("b"))
        await asyncio.sleep(0.055)
        assert 3 <= calls.count("a") <= 6
        assert calls.count("a") == calls.count("b")
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
        await asyncio.sleep(0.045)
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
        await asyncio.sleep(0.015)
        assert calls == ["first"]
        t.leave("first")

    asyncio.run(go())
