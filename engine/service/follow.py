"""Following operations in the service until each ends: ``bgtransfer wait`` and the API.

A follower holds one WebSocket.  It reads each operation's state after the socket
is open (so no end can slip between the two), then applies events; on a ``reset``,
a gap in the ids, a new epoch or a broken socket (the service killed and started
again) it reads the state again.  What it missed is never guessed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from engine.service.client import ServiceClient
from engine.service.protocol import OpView


class Follower:
    """Calls ``on_view`` with every new state of the operations it follows (all of
    them when ``guids`` is None) and ``on_event`` with every raw event."""

    def __init__(
        self,
        client: ServiceClient,
        guids: list[str] | None,
        on_view: Callable[[OpView], None],
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        self.guids = guids
        self.on_view = on_view
        self.on_event = on_event
        self.epoch: int | None = None
        self.last_id: int | None = None
        self.ws: aiohttp.ClientWebSocketResponse[bool] | None = None

    async def reread(self) -> None:
        if self.guids is None:
            for view in await self.client.current():
                self.on_view(view)
        else:
            for guid in self.guids:
                self.on_view(await self.client.get(guid))

    async def run(self, done: Callable[[], bool]) -> None:
        """Follow until ``done()`` is true after an update."""
        while not done():
            try:
                await self._session(done)
            except (aiohttp.ClientError, ConnectionError):
                await self.client.revive()
                await asyncio.sleep(0.05)  # the next call starts the service again

    async def _session(self, done: Callable[[], bool]) -> None:
        ws = self.ws = await self.client.events(self.last_id, self.epoch, self.guids)
        try:
            fresh = True
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                if event["kind"] == "hello":
                    stale = event["epoch"] != self.epoch
                    self.epoch = event["epoch"]
                    if stale or self.last_id is None:
                        self.last_id = event["id"]
                        await self.reread()
                    fresh = False
                elif event["kind"] == "reset":
                    self.last_id = event["id"]
                    await self.reread()
                else:
                    self._apply(event)
                if not fresh and done():
                    return
        finally:
            self.ws = None
            await ws.close()

    def _apply(self, event: dict[str, Any]) -> None:
        if event["kind"] != "ranges":  # ranges are not numbered in the kept stream
            self.last_id = event["id"]
        if self.on_event is not None:
            self.on_event(event)
        if event["kind"] == "progress":
            self.on_view(OpView.from_json(event["op"]))
