"""The client side of the protocol: HTTP over the Unix socket (aiohttp's UnixConnector).

Every call starts the service when it is not running (``launcher``) and, when a
connection breaks because the service was killed, starts it again and retries once:
the service resumes its operations when it starts, so a call retried is a call
answered by the same operations.  Errors come back as the engine's own types.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from engine import errors
from engine.service.launcher import ServiceUnavailable, ensure_running
from engine.service.paths import ServicePaths
from engine.service.protocol import API, OpView

_ERRORS: dict[str, type[Exception]] = {
    "InvalidRequestError": errors.InvalidRequestError,
    "BadRequest": errors.InvalidRequestError,
    "ValueError": errors.InvalidRequestError,
    "InvalidStateError": errors.InvalidStateError,
    "ResultFileInUseError": errors.ResultFileInUseError,
    "NotFound": errors.InvalidRequestError,
}


class ServiceClient:
    """One aiohttp session to the service; use from one event loop."""

    def __init__(self, state_dir: Any = None, *, autostart: bool = True) -> None:
        self.paths = ServicePaths.of(state_dir)
        self.autostart = autostart
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.autostart:
                await asyncio.to_thread(ensure_running, self.paths)
            connector = aiohttp.UnixConnector(path=str(self.paths.socket), limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=10)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def revive(self) -> None:
        """After a connection failed: start the service again if it is gone.  The
        session stays (a WebSocket on it may be fine; aiohttp drops broken
        connections by itself, and each new one connects to the path afresh)."""
        if self.autostart:
            await asyncio.to_thread(ensure_running, self.paths)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call; a connection refused or cut (the service killed) starts it again
        and retries once."""
        for attempt in (0, 1):
            session = await self._open()
            try:
                async with session.request(
                    method, f"http://bgtransfer{API}{path}", json=body
                ) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status >= 400:
                        raise _error(resp.status, data)
                    return data
            except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                if attempt == 0 and _unsent(exc):
                    continue  # a kept connection the service had closed: the call never left
                if attempt or not self.autostart:
                    raise ServiceUnavailable(f"the service at {self.paths.socket}: {exc}") from exc
                await self.revive()
        raise AssertionError("unreachable")

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/service")
        return result

    async def create(self, fields: dict[str, Any]) -> OpView:
        return OpView.from_json(await self.request("POST", "/downloads", fields))

    async def get(self, guid: str) -> OpView:
        return OpView.from_json(await self.request("GET", f"/downloads/{guid}"))

    async def current(self) -> list[OpView]:
        data = await self.request("GET", "/downloads")
        return [OpView.from_json(v) for v in data["operations"]]

    async def control(
        self, guid: str, action: str, credentials: dict[str, Any] | None = None
    ) -> OpView:
        body = {"credentials": credentials} if credentials else {}
        return OpView.from_json(await self.request("POST", f"/downloads/{guid}/{action}", body))

    async def patch(self, guid: str, fields: dict[str, Any]) -> OpView:
        return OpView.from_json(await self.request("PATCH", f"/downloads/{guid}", fields))

    async def ranges(self, guid: str) -> list[tuple[int, int]]:
        data = await self.request("GET", f"/downloads/{guid}/ranges")
        return [(o, n) for o, n in data["ranges"]]

    async def response(self, guid: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.request("GET", f"/downloads/{guid}/response")
        return result

    async def available(self, guid: str, offset: int, want: int) -> int:
        data = await self.request("GET", f"/downloads/{guid}/available?offset={offset}&want={want}")
        return int(data["n"])

    async def stop(self) -> None:
        await self.request("POST", "/service/stop", {})

    async def events(
        self, since: int | None = None, epoch: int | None = None, guids: list[str] | None = None
    ) -> aiohttp.ClientWebSocketResponse[bool]:
        """The WebSocket of events (``hello`` first, then what was missed since ``since``)."""
        session = await self._open()
        params = {}
        if since is not None and epoch is not None:
            params = {"since": str(since), "epoch": str(epoch)}
        if guids is not None:
            params["guids"] = ",".join(guids)
        return await session.ws_connect(
            f"http://bgtransfer{API}/events", params=params, heartbeat=30.0
        )


def _error(status: int, data: Any) -> Exception:
    message = data.get("error", f"HTTP {status}") if isinstance(data, dict) else f"HTTP {status}"
    kind = _ERRORS.get(data.get("type", "") if isinstance(data, dict) else "")
    if kind is not None:
        return kind(message)
    if status == 403:
        return PermissionError(message)
    return errors.TransportError(message)


def _unsent(exc: BaseException) -> bool:
    """Whether the request failed before it was all written: aiohttp took a kept
    connection that the service had begun to close (seen with 100 clients at once).
    The service never saw the call, so sending it again cannot do it twice."""
    return isinstance(exc, aiohttp.ClientOSError) and "write request" in str(exc)
