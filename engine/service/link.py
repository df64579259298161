"""A client process's one connection to the service: a thread with its own event loop.

The API's calls come from any thread, blocking or from the caller's own loop; the
aiohttp session and the WebSocket live on this thread's loop, so neither is ever
shared between loops.  The WebSocket follows the operations this process holds and
stays open while one of them has not ended (an attached client keeps the service
from exiting for idleness; a process whose downloads all ended lets it go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import weakref
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import aiohttp

from engine.service.client import ServiceClient
from engine.service.protocol import OpView

if TYPE_CHECKING:
    from engine.service.operation import RemoteOperation

T = TypeVar("T")


class Link:
    _links: ClassVar[dict[Path, Link]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def to(cls, state_dir: Path) -> Link:
        with cls._guard:
            link = cls._links.get(state_dir)
            if link is None:
                link = cls._links[state_dir] = cls(state_dir)
            return link

    def __init__(self, state_dir: Path) -> None:
        self.client = ServiceClient(state_dir)
        self.loop = asyncio.new_event_loop()
        self.ops: weakref.WeakValueDictionary[str, RemoteOperation] = weakref.WeakValueDictionary()
        self.live: dict[str, RemoteOperation] = {}
        """Unfinished operations followed: held, so a started download dropped by the
        application still tells its callbacks and completion group."""
        self.epoch: int | None = None
        self.last_id: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="bgtransfer-link", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- calling -----------------------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the link's loop and wait (from any other thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking service call from the link's own thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    # -- following ---------------------------------------------------------------------
    def follow(self, op: RemoteOperation) -> None:
        """Receive this operation's events until it ends."""
        self.ops[op.guid_str] = op
        if op.view.ended:
            return
        self.live[op.guid_str] = op
        self.loop.call_soon_threadsafe(self._follow, op.guid_str)

    def _follow(self, guid: str) -> None:
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._events())
        elif self._ws is not None:
            self.loop.create_task(self._send({"follow": [guid]}))

    async def subscribe_ranges(self, op: RemoteOperation) -> None:
        """Have the service raise this operation's range events to us, and wait until
        it says so (``ranges_ready``): a start sent after cannot outrun it."""
        await self.acall(self._subscribe_ranges(op))

    async def _subscribe_ranges(self, op: RemoteOperation) -> None:
        guid = op.guid_str
        ready = self._ready.get(guid)
        if ready is None or ready.done():
            ready = self._ready[guid] = self.loop.create_future()
        self._connected.clear()
        self._follow(guid)
        while self._ws is None:
            await self._connected.wait()
            self._connected.clear()
        await self._send({"ranges": guid})
        await ready

    def send(self, message: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._send(message)))

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_str(json.dumps(message))

    async def _events(self) -> None:
        while self.live:
            try:
                await self._session()
            except (aiohttp.ClientError, ConnectionError):
                await self.client.revive()
                await asyncio.sleep(0.05)  # the next connection starts it again

    async def _session(self) -> None:
        ws = await self.client.events(self.last_id, self.epoch, list(self.live))
        self._ws = ws
        try:
            for guid, op in list(self.live.items()):  # follows sent before the socket
                if op.wants_ranges:
                    await ws.send_str(json.dumps({"ranges": guid}))
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                await self._event(json.loads(msg.data))
                if not self.live:
                    return
        finally:
            self._ws = None
            await ws.close()

    async def _event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "hello":
            stale = event["epoch"] != self.epoch
            self.epoch = event["epoch"]
            if stale or self.last_id is None:
                self.last_id = event["id"]
                await self._reread()
            self._connected.set()
            return
        if kind == "ranges_ready":
            op = self.ops.get(event["guid"])
            if op is not None:
                op.ranges_known([(o, n) for o, n in event["ranges"]])
            ready = self._ready.pop(event["guid"], None)
            if ready is not None and not ready.done():
                ready.set_result(None)
            return
        self.last_id = event["id"]
        if kind == "reset":
            await self._reread()
            return
        op = self.ops.get(event["guid"] or "")
        if op is None:
            return
        if kind == "progress":
            self._update(op, OpView.from_json(event["op"]))
        elif kind == "ranges":
            op.ranges_event([(o, n) for o, n in event["added"]], event["restarted"])
            if op.view.ended and not op.ranges_owed():
                self.live.pop(op.guid_str, None)

    async def _reread(self) -> None:
        """A new service (or missed events): read each followed operation again."""
        for guid, op in list(self.live.items()):
            with contextlib.suppress(Exception):
                view = await self.client.get(guid)
                if view.waiting_for_credentials and op.credentials():
                    await self.client.control(guid, "attach", op.credentials())
                    view = await self.client.get(guid)
                self._update(op, view)

    def _update(self, op: RemoteOperation, view: OpView) -> None:
        op.apply(view)
        if view.ended and not op.ranges_owed():
            self.live.pop(view.guid, None)
