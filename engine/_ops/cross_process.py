"""Cancelling an operation that another process drives.

One process at a time drives an operation (``_oplock``), so another one cannot stop
it by itself: ``bgtransfer cancel GUID`` beside a ``bgtransfer get`` in another shell,
or an app that finds, with ``get_current_downloads``, a download its other process
runs.  The asking process writes the cancel into the state database's ``requests``
table and waits.  The driving process looks there every ``LOOK_EVERY`` seconds while
it drives anything (one query over a table that is almost always empty), claims the
ask, cancels through the operation's own ``cancel()``, and answers once the partial
data is gone and the outcome settled.  A driver that does not claim the ask within
``ANSWER_WITHIN`` seconds has it withdrawn, and the asker gets ResultFileInUseError,
as it did before this channel; a driver that lets go meanwhile lets the asker
cancel the operation itself (or, if it took the ask first, finish removing the
partial data it may have left: its claim is committed with the cancel).

Only cancel crosses: a pause from elsewhere would leave the driving process waiting
on a download it no longer drives (a ``bgtransfer get`` that never ends), so pause
and attach stay refused there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine._disk.core import remove_partial
from engine._ops.interfaces import EngineOperation
from engine._runtime.loop import PerLoop, engine_here
from engine._runtime.ticker import ticker
from engine.errors import InvalidStateError, ResultFileInUseError, TransferError

if TYPE_CHECKING:
    from engine._ops.outcome import Outcome
    from engine._state.store import Store

LOOK_EVERY = 0.5
"""Seconds between the driving process's looks at the asks."""

ANSWER_WITHIN = 10.0
"""Seconds an asker waits for the driver to claim its ask."""


class _Board:
    """The operations one loop drives for one state database, and the look at what
    other processes asked of them (a member of the loop's ticker while any is driven)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ops: dict[str, EngineOperation] = {}
        self._ticker = ticker(LOOK_EVERY)

    def join(self, op: EngineOperation) -> None:
        if not self.ops:
            self._ticker.join(self, self._look)
        self.ops[op.record.guid] = op

    def leave(self, op: EngineOperation) -> None:
        if self.ops.pop(op.record.guid, None) is not None and not self.ops:
            self._ticker.leave(self)

    def _look(self) -> None:
        for guid in self.store.asked():
            op = self.ops.get(guid)
            if op is None or not self.store.take(guid):
                continue  # another process drives it, or took the ask first
            try:
                op.cancel()
            except TransferError as exc:  # being completed: too late to cancel
                self.store.answer(guid, f"refused: {exc}")
                continue
            op.outcome.add_done_callback(self._answer_done(guid))

    def _answer_done(self, guid: str) -> Callable[[Outcome[None]], None]:
        """Answers 'done' once the outcome is settled (the partial data removed first),
        from whichever thread settles it."""
        return lambda _: self.store.answer(guid, "done")


_boards: PerLoop[Store, _Board] = PerLoop()


def drive(op: EngineOperation) -> _Board:
    """On the engine loop, while this process drives ``op``: answer asks of it.
    The caller leaves the board it got when it lets go."""
    mine = _boards.here()
    board = mine.get(op.store)
    if board is None:
        board = mine[op.store] = _Board(op.store)
    board.join(op)
    return board


def ask_to_cancel(op: EngineOperation) -> bool:
    """From a process that does not drive ``op``: have its driver cancel it, and wait.

    True once it is canceled there; False when the driver went away meanwhile (the
    caller cancels it itself).  Raises ResultFileInUseError when the driver does not
    answer, InvalidStateError when it refuses (the download is being completed)."""
    if engine_here() is not None:
        raise op.elsewhere_error()  # waiting here would stall this process's downloads
    store, guid = op.store, op.record.guid
    store.ask_cancel(guid)
    start = time.monotonic()
    while True:
        answer = store.answer_of(guid)
        if answer == "done":
            store.forget_request(guid)
            return True
        if answer is not None and answer.startswith("refused: "):
            store.forget_request(guid)
            raise InvalidStateError(answer.removeprefix("refused: "), guid=op.guid)
        if not op.oplock.held_elsewhere():  # its driver let go, or is gone
            store.forget_request(guid)
            if answer == "taken":
                # 'taken' was committed with the cancel itself: canceled, but the
                # driver went (a get that exits as its download ends) before its
                # answer, perhaps before removing the partial data
                remove_partial(op.result_file)
                return True
            return False
        waited = time.monotonic() - start
        # untaken past ANSWER_WITHIN (withdrawn, so it cannot be taken later), or
        # taken and still not carried out long after: give up
        late = waited > ANSWER_WITHIN and answer != "taken"
        if (late and (answer is None or store.withdraw(guid))) or waited > 6 * ANSWER_WITHIN:
            store.forget_request(guid)
            raise ResultFileInUseError(
                f"{op.result_file}: operation {op.guid} is driven by another process, "
                f"which did not carry out the cancel within {waited:.0f} s",
                guid=op.guid,
            )
        time.sleep(0.02)
