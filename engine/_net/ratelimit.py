"""Byte-rate limits: the engine grants each transfer its bytes a tick at a time, and
libcurl (CURLOPT_MAX_RECV_SPEED_LARGE) holds it to what it was granted.

Theory of operation
-------------------
A ``Budget`` is a rate in bytes a second (0: none) shared by what runs under it: a
downloader's budget by its operations' budgets (and a bulk job's), an operation's by
its transfers (the easy handles on the wire, one ``_Flow`` each).  The downloader's
rate goes to its operations in proportion to their live transfers, none past its own
rate; what a capped operation leaves goes to the others (water-filling): that makes
each flow's ``share``.

libcurl alone cannot keep a rate over short windows: it hands a transfer a whole
second of its rate at once, at each new value, at the first byte of each body, and
at the start of each second, so a 5 s window may carry six seconds' worth, and a
pooled handle that ended its last transfer with no allowance left starts the next
without watching its socket (nothing wakes it: a stall).  So the engine keeps the
count.  Each limited budget holds ``tokens``: its rate accrues into them, never more
than ``BURST`` seconds' worth.  Every ``TICK`` seconds (on the engine loop, never per
byte) each flow is settled: the bytes it took since its last grant are counted (its
``count``, a read of what its write callback got), what it was granted and did not
take goes back to the budgets above it, and it is granted again, out of the tokens,
in proportion to its share.  A grant is set as the handle's
CURLOPT_MAX_RECV_SPEED_LARGE, which libcurl gives at once in full and no more until
its next second, which the next tick comes well before.  A flow that took bytes since
the last tick is woken (``pause(PAUSE_CONT)`` marks it to run, ``Multi.kick`` runs
it): libcurl would otherwise sleep through the rest of its second.  A new transfer is
granted at once, from what the tokens hold then.

Whatever libcurl delivers past a grant is counted all the same, as a debt the next
grants pay, so over any window a budget's flows take at most its rate for the window
plus what was held and granted at its start (``BURST`` and a tick's worth).  Under
no limit, a request costs a small record (so that a limit set while it runs applies
at once), and a bulk job's small file one check.

This needs libcurl 8.18 or later, whose limit is a token bucket that a new value
refills; an older one (a pycurl built against it) paces each transfer at its share
by itself, as far as its own averaging goes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pycurl

from engine._runtime.loop import engine_loop, running_loop

TICK = 0.1
"""Seconds between grants: a 5 s window carries at most about two ticks' worth more
than the rate."""

BURST = 0.25
"""Seconds of its rate a budget may hold ungranted (after an idle spell, say)."""

_GRANTS = pycurl.version_info()[2] >= 0x081200
"""libcurl takes a new CURLOPT_MAX_RECV_SPEED_LARGE as a fresh allowance (8.18 on)."""
_SPEED: int = pycurl.MAX_RECV_SPEED_LARGE
_CONT: int = pycurl.PAUSE_CONT


@dataclasses.dataclass(slots=True, eq=False)
class _Flow:
    """One transfer under a budget: its handle, its multi, and what it was granted."""

    budget: Budget
    curl: Any
    multi: Any
    count: Callable[[], int]
    """Body bytes the transfer took so far (what its write callback got)."""
    seen: int = 0
    """``count()`` at its last grant."""
    granted: float = 0.0
    """Its last grant (bytes), held back from the budgets above it."""
    share: float = 0.0
    """Its part of the rate, bytes a second (0: no limit)."""


def _set(curl: Any, rate: int) -> None:
    """``curl``'s CURLOPT_MAX_RECV_SPEED_LARGE (0: none).  Set even when unchanged:
    libcurl grants anew at each value it is given."""
    curl.setopt(_SPEED, rate)
    curl.bgt_rate = rate


class Budget:
    """A rate shared by the transfers under it (see the module's theory)."""

    def __init__(self, rate: int = 0, parent: Budget | None = None) -> None:
        self._rate = max(0, rate)
        self.parent = parent
        self.flows: list[_Flow] = []
        """Transfers of this budget on the wire (an operation's, a bulk job's)."""
        self._active: list[Budget] = []
        """Child budgets with a transfer on the wire (a downloader's only)."""
        self.tokens = 0.0
        """Bytes it may still grant (a limited budget's; below 0: a debt)."""
        self._stamp = -1.0
        """Loop time its tokens were last brought up to date (-1: never)."""
        self._ticker: asyncio.TimerHandle | None = None  # a root's

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, value: int) -> None:
        """A new rate (from any thread), applied to the transfers on the wire in the
        loop's next pass (the engine loop's, which drives them): never from inside a
        libcurl callback (an event handler may set it), where waking a transfer would
        call libcurl again."""
        self._rate = max(0, value)
        self._stamp = -1.0  # accrues from now, not from before the change
        try:
            loop = running_loop()  # on a loop: the one that drives this budget's transfers
        except RuntimeError:
            engine_loop().loop.call_soon_threadsafe(self._root().regrant)
        else:
            loop.call_soon(self._root().regrant)

    def _root(self) -> Budget:
        return self if self.parent is None else self.parent

    def limited(self) -> bool:
        """Whether a rate applies to this budget's transfers (its own or above it)."""
        return bool(self._rate or (self.parent is not None and self.parent._rate))

    # -- transfers on and off the wire ------------------------------------------
    def attach(self, curl: Any, multi: Any, count: Callable[[], int]) -> None:
        """``curl`` is about to go on ``multi`` under this budget; ``count()`` gives the
        body bytes its write callback took so far."""
        if not self.flows and self.parent is not None:
            self.parent._active.append(self)
        flow = _Flow(self, curl, multi, count)
        self.flows.append(flow)  # a limit set while it runs applies to it at once
        if not self.limited():
            if getattr(curl, "bgt_rate", 0):
                _set(curl, 0)  # a pooled handle limited by an earlier download
            return
        root = self._root()
        root._accrue(running_loop().time())
        root._divide()
        # The first grant is set before the request goes out: a pooled handle starts
        # with an allowance, never with the empty one its last transfer left.
        self._grant(flow, min(flow.share * TICK, self._room(flow)))
        root._tick_later()

    def pace(self, curl: Any, multi: Any, count: Callable[[], int]) -> None:
        """``attach`` a bulk job's small file, only when a limit applies (or its pooled
        handle has one to lift): under none, its transfer costs nothing here."""
        if self.limited() or getattr(curl, "bgt_rate", 0) != 0:
            self.attach(curl, multi, count)

    def detach(self, curl: Any) -> None:
        """``curl`` left the wire: what it was granted and did not take goes back."""
        flows = self.flows
        for flow in flows:
            if flow.curl is curl:
                break
        else:
            return
        flows.remove(flow)
        if not flows and self.parent is not None:
            self.parent._active.remove(self)
        if self.limited():
            self._settle(flow)
            self._root()._divide()

    # -- the grants ---------------------------------------------------------------
    def _chain(self) -> list[Budget]:
        """The limited budgets a flow of this budget takes its bytes from."""
        chain = [self] if self._rate else []
        parent = self.parent
        if parent is not None and parent._rate:
            chain.append(parent)
        return chain

    def _accrue(self, now: float) -> None:
        """Bring the tokens of every limited budget under this root up to ``now``."""
        for budget in [self, *self._active]:
            rate = budget._rate
            if not rate:
                continue
            if budget._stamp < 0:  # limited from now: a tick's worth to start with
                budget.tokens = rate * TICK
            else:
                budget.tokens = min(budget.tokens + rate * (now - budget._stamp), rate * BURST)
            budget._stamp = now

    def _settle(self, flow: _Flow) -> bool:
        """Count what ``flow`` took since its last grant; what it did not take goes
        back.  True when it took any: libcurl may hold it until its next second (it
        holds back the last of a body it was granted more than), so it is woken.  One
        that took nothing is left alone, so libcurl's low-speed check still ends a
        stalled request.  One that ran under no limit until now starts its count."""
        if not getattr(flow.curl, "bgt_rate", 0):
            flow.seen = flow.count()  # its bytes so far were taken under no limit
            return False
        took = flow.count() - flow.seen
        for budget in self._chain():
            budget.tokens += flow.granted - took
        flow.granted = 0.0
        flow.seen += took
        return took > 0

    def _room(self, flow: _Flow) -> float:
        """The most ``flow`` may be granted now: its part of what the budgets above it
        hold (a capped operation's tokens are its own transfers' alone)."""
        room = float("inf")
        if self._rate:
            room = self.tokens / len(self.flows)
        parent = self.parent
        if parent is not None and parent._rate:
            live = sum(f.share for b in parent._active for f in b.flows) or 1.0
            room = min(room, parent.tokens * flow.share / live)
        return max(0.0, room)

    def _grant(self, flow: _Flow, amount: float) -> None:
        """Grant ``flow`` ``amount`` bytes until the next tick: held back from the
        budgets above it, and set as its handle's allowance (at least a byte: 0 is no
        limit)."""
        flow.granted = amount
        flow.seen = flow.count()
        for budget in self._chain():
            budget.tokens -= amount
        _set(flow.curl, max(1, int(amount if _GRANTS else flow.share)))

    def _tick_later(self) -> None:
        if self._ticker is None:
            self._ticker = running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        self.regrant()

    def regrant(self) -> None:
        """Settle every flow under this (root) budget, grant each again, and wake those
        libcurl holds; a flow under no limit any more is freed at once."""
        if self.parent is not None:
            self._root().regrant()
            return
        self._accrue(running_loop().time())
        flows = [f for b in [self, *self._active] for f in b.flows]
        held, free = [], []
        for flow in flows:
            budget = flow.budget
            if budget.limited():
                if budget._settle(flow):
                    held.append(flow)
            elif getattr(flow.curl, "bgt_rate", 0):
                _set(flow.curl, 0)
                free.append(flow)  # libcurl may hold it until its next second
        self._divide()
        limited = [f for f in flows if f.budget.limited()]
        rooms = [f.budget._room(f) for f in limited]  # all before any is granted
        for flow, room in zip(limited, rooms, strict=True):
            flow.budget._grant(flow, room)
        _wake(held + free)
        if limited:
            self._tick_later()

    def _divide(self) -> None:
        """Each flow's share of the rate under this (root) budget (water-filling)."""
        if self.flows:  # an operation with no downloader above it
            self._spread(self._rate)
        children = self._active
        if not children:
            return
        if not self._rate:
            for child in children:
                child._spread(child._rate)
            return
        left, wanting = float(self._rate), list(children)
        while wanting:  # capped children first, the rest share what is left
            live = sum(len(c.flows) for c in wanting)
            fair = left / live
            capped = [c for c in wanting if c._rate and c._rate < fair * len(c.flows)]
            if not capped:
                for child in wanting:
                    child._spread(fair * len(child.flows))
                return
            for child in capped:
                child._spread(child._rate)
                left -= child._rate
                wanting.remove(child)

    def _spread(self, rate: float) -> None:
        """``rate`` (0: none) divided evenly among this budget's flows."""
        share = rate / len(self.flows) if rate and self.flows else 0.0
        for flow in self.flows:
            flow.share = share


def _wake(flows: list[_Flow]) -> None:
    """Have libcurl run the transfers it holds for want of an allowance."""
    multis: list[Any] = []
    for flow in flows:
        try:
            flow.curl.pause(_CONT)  # marks it to run
        except pycurl.error:
            continue  # not on a connection yet: it reads its allowance when it starts
        if flow.multi not in multis:
            multis.append(flow.multi)
    for multi in multis:
        multi.kick()
