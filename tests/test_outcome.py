"""An operation's outcome (engine/_ops/outcome.py) with real threads."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from engine._ops.outcome import Outcome


def test_a_result_set_on_one_thread_wakes_a_wait_on_another() -> None:
    outcome: Outcome[str] = Outcome()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(outcome.result(timeout=30)))
    waiter.start()
    time.sleep(0.05)  # let it block (it must not have returned yet)
    assert not got
    outcome.set_result("done")
    waiter.join(30)
    assert got == ["done"]
    assert outcome.done()
    assert outcome.exception() is None


def test_an_exception_is_raised_by_result_and_returned_by_exception() -> None:
    outcome: Outcome[str] = Outcome()
    outcome.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        outcome.result()
    assert isinstance(outcome.exception(), KeyError)


def test_a_wait_times_out_and_a_second_setting_is_refused() -> None:
    outcome: Outcome[int] = Outcome()
    with pytest.raises(TimeoutError):
        outcome.result(timeout=0.01)
    outcome.set_result(1)
    with pytest.raises(RuntimeError):
        outcome.set_result(2)
    with pytest.raises(RuntimeError):
        outcome.set_exception(ValueError())
    assert outcome.result(timeout=0) == 1


def test_callbacks_run_once_in_order_and_one_that_raises_stops_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome: Outcome[int] = Outcome()
    calls: list[str] = []

    def broken(_: Outcome[int]) -> None:
        calls.append("broken")
        raise ValueError("callback bug")

    outcome.add_done_callback(lambda o: calls.append(f"first {o.result()}"))
    outcome.add_done_callback(broken)
    outcome.add_done_callback(lambda o: calls.append("third"))
    with caplog.at_level(logging.ERROR, logger="engine._ops.outcome"):
        outcome.set_result(7)
    assert calls == ["first 7", "broken", "third"]
    assert "callback bug" in caplog.text
    outcome.add_done_callback(lambda o: calls.append("late"))  # already settled: at once
    assert calls[-1] == "late"
