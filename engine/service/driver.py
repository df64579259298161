"""The service's operations: the in-process engine's, driven here for every client.

Each operation the service drives has one progress callback (on the engine thread,
handed over to the service's loop) and one watcher task awaiting its end.  An end
is written to the journal before it is published, so a client told COMPLETED finds
it so after any crash.  Control calls that wait for the engine (cancel waits for the
partial data to be removed) run on a worker thread, never on the service's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine._runtime.loop import engine_loop
from engine.downloader import BackgroundDownloader
from engine.errors import InvalidRequestError, TransferCanceled, TransferError
from engine.operation import DownloadOperation
from engine.service.hub import Hub
from engine.service.journal import Ending, Journal
from engine.service.protocol import OpView, enum_member
from engine.service.requests import CreateRequest
from engine.values import (
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Credential,
)
from engine.web_error import WebErrorStatus

S = BackgroundTransferStatus
_BUSY = (
    S.IDLE,
    S.RUNNING,
    S.PAUSED_NO_NETWORK,
    S.PAUSED_COSTED_NETWORK,
    S.PAUSED_SYSTEM_POLICY,
)
_RESUMABLE = (S.PAUSED_BY_APPLICATION, S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS)


RESPONSES_KEPT = 1000


def _response_json(op: DownloadOperation) -> dict[str, Any] | None:
    info = op.get_response_information()
    if info is None:
        return None
    data = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    data["headers"] = dict(info.headers)
    return data


class NotFound(LookupError):
    """No operation with that GUID (HTTP 404)."""


def view_of(op: DownloadOperation, *, waiting: bool = False) -> OpView:
    p = op.progress
    group = op.transfer_group
    return OpView(
        guid=str(op.guid),
        uri=op.requested_uri,
        result_file=os.fspath(op.result_file),
        status=p.status.name,
        bytes_received=p.bytes_received,
        total_bytes_to_receive=p.total_bytes_to_receive,
        has_restarted=p.has_restarted,
        has_response_changed=p.has_response_changed,
        method=op.method,
        priority=op.priority.name,
        cost_policy=op.cost_policy.name,
        group=None if group is None else group.name,
        random_access=op.is_random_access_required,
        checksum=None if op.expected_checksum is None else "=".join(op.expected_checksum),
        web_error=None
        if op.current_web_error_status is None
        else op.current_web_error_status.value,
        error=op.record.error_message if p.status is S.ERROR else None,
        waiting_for_credentials=waiting,
        connections=op.connections,
        headers=[[k, v] for k, v in op.record.headers],
        sources=list(op.record.sources),
        max_bytes_per_second=op.max_bytes_per_second,
        dropped_sources=op.dropped_sources,
    )


def view_of_ending(ending: Ending) -> OpView:
    return OpView(
        guid=ending.guid,
        uri=ending.uri,
        result_file=ending.result_file,
        status=ending.status,
        bytes_received=ending.total if ending.status == "COMPLETED" else 0,
        total_bytes_to_receive=ending.total,
        web_error=ending.web_error,
        error=ending.error,
    )


class Driver:
    def __init__(self, state_dir: Path, journal: Journal, hub: Hub) -> None:
        self.loop = asyncio.get_running_loop()
        self.journal = journal
        self.hub = hub
        self.default = BackgroundDownloader(state_dir=state_dir)
        self.state_dir = self.default.state_dir
        self.ops: dict[str, DownloadOperation] = {}
        self.watched: set[str] = set()
        self.waiting_credentials: set[str] = set()
        self.ended_here: set[str] = set()
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self.deferrals: dict[str, int] = {}
        self.responses: dict[str, dict[str, Any] | None] = {}
        """The last response of operations that ended, oldest first."""

    # -- finding ---------------------------------------------------------------------
    def restore(self) -> None:
        """Take back the operations this service drove before it stopped or was killed."""
        wanted = self.journal.wanted()
        for op in self.default.get_current_downloads(include_groups=True):
            guid = str(op.guid)
            if guid not in wanted:
                continue
            self.ops[guid] = op
            server, proxy = self.journal.needs_secret(guid)
            if server or proxy:
                self._hold_for_credentials(op)
                continue
            try:
                self._go_on(op)
            except TransferError as exc:  # driven by another process: leave it to it
                self.hub.publish("error", guid, message=str(exc))
        for guid in wanted - set(self.ops):
            self.journal.unwant(guid)  # ended while no service ran

    def _hold_for_credentials(self, op: DownloadOperation) -> None:
        """Credentials are never stored: wait paused until a client brings them."""
        if op.status in _BUSY and op.method == "GET":
            op.pause()
        self.waiting_credentials.add(str(op.guid))

    def find(self, guid: str) -> DownloadOperation:
        op = self.ops.get(guid)
        if op is not None:
            return op
        for found in self.default.get_current_downloads(include_groups=True):
            if str(found.guid) == guid:
                self.ops[guid] = found
                return found
        raise NotFound(f"no operation {guid}")

    def find_or_ended(self, guid: str) -> DownloadOperation | Ending:
        """The live operation, else what the journal kept of its end (NotFound: neither)."""
        try:
            return self.find(guid)
        except NotFound:
            ending = self.journal.ending(guid)
            if ending is None:
                raise
            return ending

    def view(self, guid: str) -> OpView:
        op = self.find_or_ended(guid)
        if isinstance(op, Ending):
            return view_of_ending(op)
        return view_of(op, waiting=guid in self.waiting_credentials)

    def current(self) -> list[OpView]:
        views = []
        for op in self.default.get_current_downloads(include_groups=True):
            guid = str(op.guid)
            self.ops.setdefault(guid, op)
            views.append(view_of(self.ops[guid], waiting=guid in self.waiting_credentials))
        return views

    def busy(self) -> bool:
        """Some operation of ours is running or waits for the engine to let it."""
        return any(op.status in _BUSY and guid in self.watchers for guid, op in self.ops.items())

    # -- creating and controlling -------------------------------------------------------
    def create(self, req: CreateRequest) -> OpView:
        op = req.create(self.state_dir)
        guid = str(op.guid)
        self.ops[guid] = op
        if req.start:
            self._remember_secret(op, req.server, req.proxy)
            op.start(self._callback())
            self.watched.add(guid)
            self._watch(op)
        return view_of(op)

    def _remember_secret(
        self, op: DownloadOperation, server: Credential | None, proxy: Credential | None
    ) -> None:
        self.journal.want(str(op.guid), server=server is not None, proxy=proxy is not None)

    def give_credentials(
        self, op: DownloadOperation, server: Credential | None, proxy: Credential | None
    ) -> None:
        """Credentials from a client: for this operation's next requests (memory only).

        The operation shares its settings with the downloader it came from; it gets
        a copy of its own with these credentials."""
        if server is None and proxy is None:
            return
        settings = op.settings
        op.settings = dataclasses.replace(
            settings,
            server_credential=server or settings.server_credential,
            proxy_credential=proxy or settings.proxy_credential,
        )
        self.waiting_credentials.discard(str(op.guid))

    def _missing_credentials(self, op: DownloadOperation) -> bool:
        guid = str(op.guid)
        if guid not in self.waiting_credentials:
            return False
        server, proxy = self.journal.needs_secret(guid)
        return (server and op.settings.server_credential is None) or (
            proxy and op.settings.proxy_credential is None
        )

    async def control(self, guid: str, action: str, creds: dict[str, Credential]) -> OpView:
        op = self.find(guid)
        self.give_credentials(op, creds.get("server"), creds.get("proxy"))
        if action == "start":
            self._remember_secret(op, op.settings.server_credential, op.settings.proxy_credential)
            op.start(self._callback())
            self.watched.add(guid)
            self._watch(op)
        elif action == "make_current":
            op.make_current_in_transfer_group()
        elif action == "pause":
            await asyncio.to_thread(op.pause)
            self.journal.unwant(guid)
        elif action == "cancel":
            await asyncio.to_thread(op.cancel)
            self._ended(op, S.CANCELED, None)
        elif action in ("resume", "attach"):
            if self._missing_credentials(op):
                raise InvalidRequestError(
                    f"operation {guid} needs its credentials again (the service restarted)"
                )
            self._remember_secret(op, op.settings.server_credential, op.settings.proxy_credential)
            if action == "resume" or op.status in (S.ERROR, *_RESUMABLE):
                self._go_on(op)
            else:
                self._attach(op)
        return self.view(guid)

    def _go_on(self, op: DownloadOperation) -> None:
        """Let it continue, whatever it waits for (as ``bgtransfer resume`` does)."""
        guid = str(op.guid)
        if op.status is S.ERROR:
            self.journal.reopened(guid)
            self.ended_here.discard(guid)
            op.resume()
        self._attach(op)
        if op.status in _RESUMABLE:
            op.resume()
        self.journal.want(guid)

    def _attach(self, op: DownloadOperation) -> None:
        guid = str(op.guid)
        if guid not in self.watched:
            op.attach(self._callback())
            self.watched.add(guid)
        self._watch(op)

    def _watch(self, op: DownloadOperation) -> None:
        guid = str(op.guid)
        task = self.watchers.get(guid)
        if task is None or task.done():
            self.watchers[guid] = self.loop.create_task(self._await_end(op))

    async def _await_end(self, op: DownloadOperation) -> None:
        guid = str(op.guid)
        try:
            await op.wait_async()
        except TransferCanceled:
            self._ended(op, S.CANCELED, None)
        except TransferError as exc:
            self._ended(op, S.ERROR, exc)
        else:
            self._ended(op, S.COMPLETED, None)
        finally:
            if self.watchers.get(guid) is asyncio.current_task():
                del self.watchers[guid]

    def _ended(self, op: DownloadOperation, status: S, exc: TransferError | None) -> None:
        guid = str(op.guid)
        if guid in self.ended_here:
            return
        self.ended_here.add(guid)
        web = exc.web_error_status if exc is not None else None
        ending = Ending(
            guid,
            status.name,
            os.fspath(op.result_file),
            op.requested_uri,
            op.progress.total_bytes_to_receive,
            None if exc is None else str(exc),
            None if web is None else web.value,
        )
        self.journal.ended(ending)  # committed before anyone is told
        self.responses[guid] = _response_json(op)
        while len(self.responses) > RESPONSES_KEPT:
            self.responses.pop(next(iter(self.responses)))
        if status is not S.ERROR:
            self.ops.pop(guid, None)
        self.hub.publish("progress", guid, op=view_of_ending(ending).to_json())

    # -- events ----------------------------------------------------------------------
    def _callback(self) -> Callable[[DownloadOperation], None]:
        """A progress callback: runs on the engine thread, publishes on this loop."""
        loop = self.loop

        def progress(op: DownloadOperation) -> None:
            if op.status in (S.COMPLETED, S.CANCELED, S.ERROR):
                return  # the watcher publishes an end once the journal has it
            view = view_of(op).to_json()
            with contextlib.suppress(RuntimeError):  # the service is closing
                loop.call_soon_threadsafe(self._publish_progress, view, time.time())

        return progress

    def _publish_progress(self, view: dict[str, Any], at: float) -> None:
        """``at``: when the engine reported it (wall clock, for a client's latency)."""
        guid = view["guid"]
        if guid in self.ended_here:
            return  # a late tick after the end was told
        self.hub.publish("progress", guid, op=view, at=at)

    def follow_ranges(self, guid: str) -> None:
        """Raise this operation's range events for clients (the handler is the
        service's: it defers the engine's next event until the clients acknowledge)."""
        op = self.find(guid)
        if guid in self.deferrals:
            return
        loop = self.loop

        def handler(
            op: DownloadOperation, args: BackgroundDownloadRangesDownloadedEventArgs
        ) -> None:
            deferral = args.get_deferral()
            added = [[r.offset, r.length] for r in args.added_ranges]
            loop.call_soon_threadsafe(
                self._send_ranges, guid, added, args.was_download_restarted, deferral.complete
            )

        self.deferrals[guid] = op.ranges_downloaded.subscribe(handler)

    def _send_ranges(
        self, guid: str, added: list[list[int]], restarted: bool, complete: Callable[[], None]
    ) -> None:
        waiting = self.hub.ranges_event(guid, added, restarted)
        if not waiting:
            complete()
            return
        left = [len(waiting)]

        def one_done() -> None:
            left[0] -= 1
            if left[0] == 0:
                complete()

        for sub in waiting:
            sub.acks[guid] = one_done

    def ranges(self, guid: str) -> list[list[int]]:
        op = self.find_or_ended(guid)
        if isinstance(op, Ending):
            return [[0, op.total]] if op.status == "COMPLETED" and op.total else []
        return [[r.offset, r.length] for r in op.get_downloaded_ranges()]

    def response(self, guid: str) -> dict[str, Any] | None:
        """The operation's last response as JSON (kept a while after it ended)."""
        if guid in self.responses:
            return self.responses[guid]
        return _response_json(self.find(guid))

    def patch(self, guid: str, fields: dict[str, Any]) -> OpView:
        """Set what a client may set on an operation (each setter's own checks apply)."""
        op = self.find(guid)
        if "uri" in fields:
            op.requested_uri = fields["uri"]
        if "priority" in fields:
            op.priority = enum_member(BackgroundTransferPriority, fields["priority"], "priority")
        if "cost_policy" in fields:
            op.cost_policy = enum_member(
                BackgroundTransferCostPolicy, fields["cost_policy"], "cost_policy"
            )
        if "random_access" in fields:
            op.is_random_access_required = fields["random_access"]
        if "max_bytes_per_second" in fields:
            op.max_bytes_per_second = fields["max_bytes_per_second"]
        if "checksum" in fields:
            op.expected_checksum = fields["checksum"]
        if "recoverable" in fields:
            try:
                codes = {WebErrorStatus(code) for code in fields["recoverable"]}
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            op.recoverable_web_error_statuses = codes
        if "headers" in fields:
            for name, _ in list(op.record.headers):
                op.remove_request_header(name)
            for name, value in fields["headers"]:
                op.set_request_header(name, value)
        return self.view(guid)

    async def available(self, guid: str, offset: int, want: int) -> int:
        """Bytes present from ``offset``, waiting on the engine's readers (which also
        point a connection at ``offset`` for a random access operation)."""
        op = self.find_or_ended(guid)
        if isinstance(op, Ending):
            if op.status != "COMPLETED":
                raise TransferCanceled(f"{op.result_file}: {op.status.lower()}")
            return max(0, min(want, op.total - offset))
        future = engine_loop().submit(op.available(offset, want))
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()  # the client went away: the engine's read waits no more

    async def stop(self) -> None:
        """Pause what runs (its staged bytes written), still wanted: the next start resumes it."""
        for op in list(self.ops.values()):
            if op.status in _BUSY and str(op.guid) in self.watchers and op.method == "GET":
                with contextlib.suppress(TransferError):
                    await asyncio.to_thread(op.pause)
