"""Events to clients: numbered, kept a while for late readers, one WebSocket a client.

Every event has an ``id`` one above the previous one and the service's ``epoch``
(its start count).  The last ``KEPT`` events stay in memory: a client that reconnects
with ``since=ID`` and the same epoch is sent those it missed; one that missed more,
or comes from an earlier epoch, is sent ``{"kind": "reset"}`` and reads the state
again.  A client follows all operations, or those it names.

``ranges`` events are sent to the clients that asked for them on an operation, and
the service holds the engine's next event back (a deferral) until each of those
clients acknowledges, so the engine coalesces what arrives meanwhile, as a
``ranges_downloaded`` handler of the same process would see.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from typing import Any

KEPT = 8192
QUEUE_MAX = 20_000
"""Events a client may fall behind by; past it, it is disconnected and reads again."""


class Subscriber:
    """One client's WebSocket: what it follows and the events queued for it."""

    def __init__(self, guids: set[str] | None) -> None:
        self.guids = guids  # None: every operation
        self.ranges: set[str] = set()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.acks: dict[str, Callable[[], None]] = {}
        """Per operation, the deferral to complete when this client acknowledges."""

    def follows(self, guid: str | None) -> bool:
        return guid is None or self.guids is None or guid in self.guids

    def put(self, text: str) -> bool:
        if self.queue.qsize() >= QUEUE_MAX:
            return False
        self.queue.put_nowait(text)
        return True

    def close(self) -> None:
        self.queue.put_nowait(None)
        for done in self.acks.values():
            done()  # a client gone acknowledges nothing: let the engine go on
        self.acks.clear()


class Hub:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.last_id = 0
        self._kept: collections.deque[tuple[int, str | None, str]] = collections.deque(maxlen=KEPT)
        self.subscribers: set[Subscriber] = set()

    def publish(self, kind: str, guid: str | None, **data: Any) -> int:
        """Number the event, keep it, queue it for whoever follows ``guid``."""
        self.last_id += 1
        event = {"id": self.last_id, "epoch": self.epoch, "kind": kind, "guid": guid, **data}
        text = json.dumps(event)
        if kind != "ranges":
            self._kept.append((self.last_id, guid, text))
        for sub in list(self.subscribers):
            wanted = sub.follows(guid) and (kind != "ranges" or guid in sub.ranges)
            if wanted and not sub.put(text):
                self.drop(sub)
        return self.last_id

    def join(self, sub: Subscriber, since: int | None, epoch: int | None) -> None:
        """Add a subscriber; queue the hello, then what it missed, or a reset."""
        self.subscribers.add(sub)
        hello = {"id": self.last_id, "epoch": self.epoch, "kind": "hello", "guid": None}
        sub.put(json.dumps(hello))
        if since is None:
            return
        oldest = self._kept[0][0] if self._kept else self.last_id + 1
        if epoch != self.epoch or since + 1 < oldest:
            reset = {"id": self.last_id, "epoch": self.epoch, "kind": "reset", "guid": None}
            sub.put(json.dumps(reset))
            return
        for event_id, guid, text in self._kept:
            if event_id > since and sub.follows(guid):
                sub.put(text)

    def drop(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.close()

    def ranges_event(self, guid: str, added: list[list[int]], restarted: bool) -> list[Subscriber]:
        """Send a ranges event to those that asked; the ones that must acknowledge it."""
        waiting = [s for s in self.subscribers if guid in s.ranges]
        if waiting:
            self.publish("ranges", guid, added=added, restarted=restarted)
        return waiting
