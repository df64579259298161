"""Byte-rate limits, kept by libcurl: each transfer's CURLOPT_MAX_RECV_SPEED_LARGE.

Theory of operation
-------------------
A ``Budget`` is a rate in bytes a second (0: none) shared by what runs under it: a
downloader's budget by its operations' budgets, an operation's by its transfers (the
easy handles on the wire).  Whenever a transfer starts or ends, or a rate changes,
the shares are divided again and set on every live handle: libcurl honours a new
value in the middle of a transfer, and paces each handle itself, so no Python runs
per byte.  The downloader's rate goes to its operations in proportion to their live
transfers, none past its own rate; what a capped operation leaves goes to the others
(water-filling).  A handle is only touched when its share changes, and a download
under no limit at all pays one attribute read a request.  All of it runs on the
engine loop.
"""

from __future__ import annotations

from typing import Any

import pycurl

from engine._runtime.loop import engine_loop, running_loop

_FIRST_STEP = 1.0
"""Seconds of libcurl's rate step (see Budget.attach)."""


def _set(curl: Any, rate: int, now: float) -> float:
    """Give ``curl`` its new rate, unless it got one less than a second ago: libcurl
    grants a second's worth with every new value, so a handle changed more often
    would overshoot.  Returns when to try again (0: done)."""
    old = getattr(curl, "bgt_rate", 0)
    if old == rate:
        return 0.0
    due = getattr(curl, "bgt_at", 0.0) + _FIRST_STEP
    if rate and old and now < due:
        return due
    curl.setopt(pycurl.MAX_RECV_SPEED_LARGE, rate)
    curl.bgt_rate, curl.bgt_at = rate, now
    return 0.0


class Budget:
    """A rate shared by the transfers under it (see the module's theory)."""

    def __init__(self, rate: int = 0, parent: Budget | None = None) -> None:
        self._rate = max(0, rate)
        self.parent = parent
        self.handles: list[Any] = []
        """Easy handles of this budget on the wire (an operation's only)."""
        self._active: list[Budget] = []
        """Child budgets with a handle on the wire (a downloader's only)."""
        self._fresh: set[Any] = set()
        """Handles in their first second on the wire: at half their share (see attach)."""

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, value: int) -> None:
        """A new rate (from any thread), applied to the transfers on the wire at once
        (on the engine loop, which drives them)."""
        self._rate = max(0, value)
        try:
            running_loop()  # on a loop: the one that drives this budget's transfers
        except RuntimeError:
            engine_loop().loop.call_soon_threadsafe(self._root().divide)
        else:
            self._root().divide()

    def _root(self) -> Budget:
        return self if self.parent is None else self.parent

    def limited(self) -> bool:
        """Whether a rate applies to this budget's transfers (its own or above it)."""
        return bool(self._rate or (self.parent is not None and self.parent._rate))

    def attach(self, curl: Any) -> None:
        """``curl`` is about to go on the wire under this budget."""
        self.handles.append(curl)
        parent = self.parent
        if parent is not None and len(self.handles) == 1:
            parent._active.append(self)
        if self.limited():
            # libcurl hands a transfer a whole second of its rate the moment it starts,
            # then a second's worth at the start of each second: at half its share in
            # its first second, a new transfer's opening burst stays within the rate.
            self._fresh.add(curl)
            running_loop().call_later(_FIRST_STEP, self._settled, curl)
            self._root().divide()
        elif getattr(curl, "bgt_rate", 0):
            _set(curl, 0, 0.0)  # a pooled handle limited by an earlier download

    def _settled(self, curl: Any) -> None:
        if curl in self._fresh:
            self._fresh.discard(curl)
            if curl in self.handles:
                self._root().divide()

    def detach(self, curl: Any) -> None:
        """``curl`` left the wire: the others get its share."""
        self.handles.remove(curl)
        self._fresh.discard(curl)
        parent = self.parent
        if parent is not None and not self.handles:
            parent._active.remove(self)
        if self.limited():
            self._root().divide()

    def divide(self) -> None:
        """Give each live handle under this (root) budget its share."""
        if self.parent is not None:
            self._root().divide()
            return
        if self.handles:  # an operation with no downloader above it
            self._spread(self._rate)
        children = self._active
        if not children:
            return
        if not self._rate:
            for child in children:
                child._spread(child._rate)
            return
        left, wanting = float(self._rate), list(children)
        while wanting:  # water-filling: capped children first, the rest share what is left
            live = sum(len(c.handles) for c in wanting)
            fair = left / live
            capped = [c for c in wanting if c._rate and c._rate < fair * len(c.handles)]
            if not capped:
                for child in wanting:
                    child._spread(int(fair * len(child.handles)))
                return
            for child in capped:
                child._spread(child._rate)
                left -= child._rate
                wanting.remove(child)

    def _spread(self, rate: int) -> None:
        """``rate`` (0: none) divided evenly among this budget's handles."""
        share = max(1, rate // len(self.handles)) if rate and self.handles else 0
        fresh, now, later = self._fresh, running_loop().time(), 0.0
        for curl in self.handles:
            due = _set(curl, max(1, share // 2) if share and curl in fresh else share, now)
            later = max(later, due)
        if later:
            running_loop().call_at(later, self._root().divide)
