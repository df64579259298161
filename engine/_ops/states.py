"""The operation's status as one explicit state machine (the shape of h11's ``_state.py``).

Theory of operation
-------------------
An operation's status changes only through ``next_status(status, event)``, which reads
one table: ``{status: {event: next_status}}``.  A pair missing from the table is an
illegal call (``resume()`` on a completed operation) and raises ``InvalidStateError``
before anything changes.  The caller (``operation.py``) persists the new status, then
reports it; nothing else assigns a status.

Events come from the application (START, PAUSE, RESUME, CANCEL, ATTACH) and from the
engine (COMPLETE, FAIL, and the pauses it takes and lifts by itself: no network, a
metered network under UNRESTRICTED_ONLY, low disk, a recoverable web error status).
"""

from __future__ import annotations

import enum

from engine.errors import InvalidStateError
from engine.values import BackgroundTransferStatus as S


class Event(enum.Enum):
    START = "start"
    ATTACH = "attach"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    COMPLETE = "complete"
    FAIL = "fail"
    RECOVERABLE_ERROR = "recoverable web error status"
    NO_NETWORK = "network lost"
    COSTED_NETWORK = "network is metered"
    SYSTEM_POLICY = "free disk space below the reserve"
    CONDITIONS_MET = "the engine's pause is over"

    __hash__ = object.__hash__  # as BackgroundTransferStatus: identity, in C


_ENGINE_PAUSES = (S.PAUSED_NO_NETWORK, S.PAUSED_COSTED_NETWORK, S.PAUSED_SYSTEM_POLICY)

_RUNNING_MOVES = {
    Event.ATTACH: S.RUNNING,
    Event.PAUSE: S.PAUSED_BY_APPLICATION,
    Event.CANCEL: S.CANCELED,
    Event.COMPLETE: S.COMPLETED,
    Event.FAIL: S.ERROR,
    Event.RECOVERABLE_ERROR: S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS,
    Event.NO_NETWORK: S.PAUSED_NO_NETWORK,
    Event.COSTED_NETWORK: S.PAUSED_COSTED_NETWORK,
    Event.SYSTEM_POLICY: S.PAUSED_SYSTEM_POLICY,
}

_ENGINE_PAUSE_MOVES = {
    Event.ATTACH: S.RUNNING,  # a new process looks at the conditions again
    Event.PAUSE: S.PAUSED_BY_APPLICATION,
    Event.CANCEL: S.CANCELED,
    Event.CONDITIONS_MET: S.RUNNING,
    Event.NO_NETWORK: S.PAUSED_NO_NETWORK,
    Event.COSTED_NETWORK: S.PAUSED_COSTED_NETWORK,
    Event.SYSTEM_POLICY: S.PAUSED_SYSTEM_POLICY,
    Event.FAIL: S.ERROR,
}

TRANSITIONS: dict[S, dict[Event, S]] = {
    S.IDLE: {
        Event.START: S.RUNNING,
        Event.ATTACH: S.RUNNING,
        Event.CANCEL: S.CANCELED,
        Event.NO_NETWORK: S.PAUSED_NO_NETWORK,
        Event.COSTED_NETWORK: S.PAUSED_COSTED_NETWORK,
        Event.SYSTEM_POLICY: S.PAUSED_SYSTEM_POLICY,
    },
    S.RUNNING: _RUNNING_MOVES,
    S.PAUSED_BY_APPLICATION: {
        Event.ATTACH: S.PAUSED_BY_APPLICATION,
        Event.RESUME: S.RUNNING,
        Event.CANCEL: S.CANCELED,
    },
    S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS: {
        Event.ATTACH: S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS,
        Event.RESUME: S.RUNNING,
        Event.CANCEL: S.CANCELED,
    },
    **dict.fromkeys(_ENGINE_PAUSES, _ENGINE_PAUSE_MOVES),
    # ERROR keeps the partial data: resume() tries again from the bitmap (e.g. after
    # disk space was freed), cancel() removes it.
    S.ERROR: {Event.RESUME: S.RUNNING, Event.CANCEL: S.CANCELED},
    S.COMPLETED: {},
    S.CANCELED: {},
}

TERMINAL = frozenset({S.COMPLETED, S.CANCELED})
"""Statuses no event leaves."""

ENGINE_PAUSE_FOR = {
    Event.NO_NETWORK: S.PAUSED_NO_NETWORK,
    Event.COSTED_NETWORK: S.PAUSED_COSTED_NETWORK,
    Event.SYSTEM_POLICY: S.PAUSED_SYSTEM_POLICY,
}
"""The pause the engine takes for each reason it may hold an operation back."""


def next_status(status: S, event: Event) -> S:
    """The status ``event`` leads to from ``status``; InvalidStateError when illegal."""
    try:
        return TRANSITIONS[status][event]
    except KeyError:
        raise InvalidStateError(
            f"cannot {event.value} an operation in status {status.name}"
        ) from None
