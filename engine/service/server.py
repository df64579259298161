"""``bgtransfer service run``: the aiohttp application on the Unix socket.

Routes (all JSON; see ``protocol``)::

    GET  /v1/service                        pid, epoch, last event id
    POST /v1/service/stop                   stop (what runs resumes at the next start)
    GET  /v1/downloads                      the unfinished operations
    POST /v1/downloads                      create (and start) one
    GET  /v1/downloads/{guid}               one, unfinished or ended
    PATCH /v1/downloads/{guid}              set its URI, priority, policy, headers...
    GET  /v1/downloads/{guid}/ranges        its downloaded ranges
    GET  /v1/downloads/{guid}/response      its last response (URI, headers, status)
    GET  /v1/downloads/{guid}/available     bytes at ?offset= (up to ?want=), waiting
    POST /v1/downloads/{guid}/{action}      start, attach, resume, pause, cancel,
                                            make_current
    GET  /v1/events?since=&epoch=&guids=    the WebSocket of events

State changes a request makes are committed before it is answered: the engine's
state database commits a write made off its own thread as it is made, and the
journal commits each of its own.  Every request is checked against the caller's uid
first (``peercred``); every failure is a JSON ``{"error", "type"}`` with a 4xx status
for what the client got wrong, so no request can bring the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from engine.errors import (
    InvalidRequestError,
    InvalidStateError,
    ResultFileInUseError,
    TransferError,
)
from engine.service import fdpass
from engine.service.driver import Driver, NotFound
from engine.service.hub import Hub, Subscriber
from engine.service.journal import Journal
from engine.service.lockfile import ServiceLock
from engine.service.paths import ServicePaths
from engine.service.peercred import bind_owner_only, inherited_socket, peer_uid
from engine.service.protocol import (
    API,
    CONTROL_FIELDS,
    CREATE_FIELDS,
    PATCH_FIELDS,
    BadRequest,
    parse_body,
)
from engine.service.requests import CreateRequest

log = logging.getLogger("bgtransfer.service")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTIONS = ("start", "attach", "resume", "pause", "cancel", "make_current")
DEFAULT_IDLE = 60.0
SWITCH_INTERVAL = 0.0005


def _error(status: int, exc: BaseException) -> web.Response:
    return web.json_response({"error": str(exc), "type": type(exc).__name__}, status=status)


class Service:
    def __init__(self, paths: ServicePaths, idle_timeout: float) -> None:
        self.paths = paths
        self.idle_timeout = idle_timeout
        self.stopping = asyncio.Event()
        self.in_flight = 0
        self.last_active = time.monotonic()
        self.journal = Journal(paths.journal)
        self.hub = Hub(self.journal.next_epoch())
        self.driver = Driver(paths.state_dir, self.journal, self.hub)
        self.uid = os.getuid()

    # -- the application ---------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1 << 20)
        app.router.add_get(f"{API}/service", self.status)
        app.router.add_post(f"{API}/service/stop", self.stop)
        app.router.add_get(f"{API}/downloads", self.list)
        app.router.add_post(f"{API}/downloads", self.create)
        app.router.add_get(f"{API}/downloads/{{guid}}", self.one)
        app.router.add_patch(f"{API}/downloads/{{guid}}", self.patch)
        app.router.add_get(f"{API}/downloads/{{guid}}/ranges", self.ranges)
        app.router.add_get(f"{API}/downloads/{{guid}}/response", self.response)
        app.router.add_get(f"{API}/downloads/{{guid}}/available", self.available)
        app.router.add_post(f"{API}/downloads/{{guid}}/{{action}}", self.control)
        app.router.add_get(f"{API}/events", self.events)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The uid check, the activity count, and every error as JSON."""
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or peer_uid(sock) != self.uid:
            refused = _error(403, PermissionError("this service serves its own user only"))
            refused.force_close()  # and nothing more on this connection
            return refused
        self.in_flight += 1
        self.last_active = time.monotonic()
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ResultFileInUseError as exc:
            return _error(409, exc)
        except (BadRequest, InvalidRequestError, ValueError) as exc:
            return _error(400, exc)
        except NotFound as exc:
            return _error(404, exc)
        except InvalidStateError as exc:  # ResultFileInUseError is one too
            return _error(409, exc)
        except TransferError as exc:
            return _error(500, exc)
        finally:
            self.in_flight -= 1
            self.last_active = time.monotonic()

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "pid": os.getpid(),
                "epoch": self.hub.epoch,
                "last_id": self.hub.last_id,
                "state_dir": os.fspath(self.paths.state_dir),
            }
        )

    async def stop(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True})

    async def list(self, request: web.Request) -> web.Response:
        views = self.driver.current()
        return web.json_response({"operations": [v.to_json() for v in views]})

    async def create(self, request: web.Request) -> web.Response:
        fields = parse_body(await request.read(), CREATE_FIELDS)
        view = self.driver.create(CreateRequest(fields))
        return web.json_response(view.to_json(), status=201)

    async def one(self, request: web.Request) -> web.Response:
        return web.json_response(self.driver.view(request.match_info["guid"]).to_json())

    async def patch(self, request: web.Request) -> web.Response:
        fields = parse_body(await request.read(), PATCH_FIELDS)
        view = self.driver.patch(request.match_info["guid"], fields)
        return web.json_response(view.to_json())

    async def ranges(self, request: web.Request) -> web.Response:
        return web.json_response({"ranges": self.driver.ranges(request.match_info["guid"])})

    async def response(self, request: web.Request) -> web.Response:
        return web.json_response(self.driver.response(request.match_info["guid"]))

    async def available(self, request: web.Request) -> web.Response:
        """How many bytes from ``offset`` (up to ``want``) are in the file, waiting
        until one is: a client's result stream reads them from the file itself."""
        try:
            offset, want = int(request.query["offset"]), int(request.query["want"])
        except (KeyError, ValueError):
            raise BadRequest("offset and want must be integers") from None
        if offset < 0 or want < 0:
            raise BadRequest("offset and want must be >= 0")
        n = await self.driver.available(request.match_info["guid"], offset, want)
        return web.json_response({"n": n})

    async def control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no action {action!r}"}))
        fields = parse_body(await request.read(), CONTROL_FIELDS)
        view = await self.driver.control(
            request.match_info["guid"], action, fields.get("credentials", {})
        )
        return web.json_response(view.to_json())

    # -- events ---------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            since = int(q["since"]) if "since" in q else None
            epoch = int(q["epoch"]) if "epoch" in q else None
        except ValueError:
            raise BadRequest("since and epoch must be integers") from None
        guids = set(filter(None, q["guids"].split(","))) if "guids" in q else None
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 16)
        await ws.prepare(request)
        sub = Subscriber(guids)
        self.hub.join(sub, since, epoch)
        sender = asyncio.get_running_loop().create_task(self._send(ws, sub))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                self._from_client(sub, msg.data)
        finally:
            self.hub.drop(sub)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.last_active = time.monotonic()
        return ws

    async def _send(self, ws: web.WebSocketResponse, sub: Subscriber) -> None:
        while (text := await sub.queue.get()) is not None:
            await ws.send_str(text)
        await ws.close()

    def _from_client(self, sub: Subscriber, text: str) -> None:
        """``{"follow": [guid]}``, ``{"ranges": guid}`` (answered ``ranges_ready`` with
        the ranges already there), ``{"ack": guid}``; anything else is ignored (a
        WebSocket message has no status to refuse it with)."""
        with contextlib.suppress(ValueError, TypeError, KeyError, NotFound, AttributeError):
            msg = json.loads(text)
            if "follow" in msg and sub.guids is not None:
                sub.guids.update(str(g) for g in msg["follow"])
            elif "ranges" in msg:
                guid = str(msg["ranges"])
                self.driver.follow_ranges(guid)
                sub.ranges.add(guid)
                if sub.guids is not None:
                    sub.guids.add(guid)
                # what is there already, in order before any ranges event to come
                ready = {
                    "id": self.hub.last_id,
                    "epoch": self.hub.epoch,
                    "kind": "ranges_ready",
                    "guid": guid,
                    "ranges": self.driver.ranges(guid),
                }
                sub.put(json.dumps(ready))
            elif "ack" in msg:
                done = sub.acks.pop(str(msg["ack"]), None)
                if done is not None:
                    done()

    def _result_of(self, guid: str) -> Path:
        return Path(self.driver.view(guid).result_file)

    # -- life ------------------------------------------------------------------------
    def idle(self) -> bool:
        return (
            not self.hub.subscribers
            and self.in_flight == 0
            and not self.driver.busy()
            and time.monotonic() - self.last_active >= self.idle_timeout
        )

    async def serve(self) -> None:
        self.driver.restore()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        sock = inherited_socket() or bind_owner_only(self.paths.socket)
        site = web.SockSite(runner, sock)
        await site.start()
        fds = await fdpass.serve(fdpass.fd_socket_path(self.paths.socket), self._result_of)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.stopping.set)
        log.info("serving on %s (pid %d, epoch %d)", self.paths.socket, os.getpid(), self.hub.epoch)
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), min(1.0, self.idle_timeout / 4))
                if self.idle():
                    log.info("idle for %.1f s: exiting", self.idle_timeout)
                    break
        finally:
            fds.close()
            for path in (self.paths.socket, fdpass.fd_socket_path(self.paths.socket)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            await self.driver.stop()
            for sub in list(self.hub.subscribers):
                self.hub.drop(sub)
            await runner.cleanup()
            watchers = list(self.driver.watchers.values())
            for task in watchers:  # what still runs resumes at the next start
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            self.journal.close()


def run_service(state_dir: Path | None, idle_timeout: float | None) -> int:
    """Run the service in the foreground until stopped or idle; 1 if one already runs."""
    paths = ServicePaths.of(state_dir)
    paths.make_dirs()
    lock = ServiceLock(paths.lock)
    holder = lock.acquire()
    if holder is not None:
        print(f"bgtransfer: a service already runs for {paths.state_dir} (pid {holder})")
        return 1
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bgtransfer-service[%(process)d] %(message)s"
    )
    timeout = idle_timeout if idle_timeout is not None else idle_from_env()
    # The engine's thread runs Python callbacks for every chunk while a download
    # moves; this thread, to tell clients, must get the GIL back from it, and waits
    # up to a switch interval each time (5 ms by default, paid again at every
    # release).  A shorter interval keeps events from queueing behind it.
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        await Service(paths, timeout).serve()

    try:
        _run(main())
    finally:
        lock.release()
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop when installed: its socket writes do not let go of the GIL, and every
    time this thread lets go of it the engine's thread may keep it for a switch
    interval (5 ms), which a hundred events in a row would each pay."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or uvloop not installed
        asyncio.run(main)
        return
    uvloop.run(main)


def idle_from_env() -> float:
    """``BGTRANSFER_SERVICE_IDLE`` seconds, else a minute."""
    raw = os.environ.get("BGTRANSFER_SERVICE_IDLE")
    try:
        return max(0.1, float(raw)) if raw else DEFAULT_IDLE
    except ValueError:
        return DEFAULT_IDLE
