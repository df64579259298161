"""``RemoteOperation``: a ``DownloadOperation``'s surface for an operation in the service.

Its state is the last view the service sent (events over the process's WebSocket,
``link``); its calls are requests to the service.  Progress callbacks and
``ranges_downloaded`` handlers run on the loop of the call that started or attached
it, else on the link's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine._ops.reporting import run_handler
from engine._state.store import Store
from engine.downloader import BackgroundTransferCompletionGroup, BackgroundTransferGroup
from engine.errors import (
    HttpError,
    InvalidRequestError,
    InvalidStateError,
    TransferCanceled,
    TransferError,
    TransportError,
)
from engine.operation import DownloadOperation, ProgressCallback
from engine.service.link import Link
from engine.service.protocol import OpView
from engine.service.streams import RemoteResultStream
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferCostPolicy,
    BackgroundTransferFileRange,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Deferral,
    Event,
    ResponseInformation,
    merge_ranges,
)
from engine.web_error import WebErrorStatus


class RemoteOperation(DownloadOperation):
    """A ``DownloadOperation`` whose download runs in the service.

    A subclass, so that code typed for, or testing for, ``DownloadOperation`` takes it;
    it overrides every public member, and never calls the base's ``__init__``: the
    engine's state of the operation (its record, runner, files) is the service's."""

    def __init__(self, link: Link, view: OpView, secret: dict[str, Any], store: Store) -> None:
        self._link = link
        self._group_store = store
        self.recoverable_web_error_statuses: set[WebErrorStatus] = set()
        self._recoverable_sent: list[int] = []
        self.view = view
        self._secret = secret
        self._view_lock = threading.Lock()
        self._callbacks: list[tuple[ProgressCallback, asyncio.AbstractEventLoop | None]] = []
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.ranges_downloaded: Event[BackgroundDownloadRangesDownloadedEventArgs] = Event()
        self.wants_ranges = False
        self._covered: list[tuple[int, int]] = []
        """Ranges the service has told of: an operation that completed is followed
        until its last range event has come."""
        self.completion_group: BackgroundTransferCompletionGroup | None = None
        if view.ended:
            self._settle(view)

    @property
    def link(self) -> Link:
        """The connection to the service this operation lives in."""
        return self._link

    # -- what it is ----------------------------------------------------------------------
    @property
    def guid(self) -> uuid.UUID:
        return uuid.UUID(self.view.guid)

    @property
    def guid_str(self) -> str:
        return self.view.guid

    @property
    def requested_uri(self) -> str:
        return self.view.uri

    @requested_uri.setter
    def requested_uri(self, value: str) -> None:
        self._patch(uri=value)

    @property
    def result_file(self) -> Path:
        return Path(self.view.result_file)

    @property
    def method(self) -> str:
        return self.view.method

    @property
    def status(self) -> BackgroundTransferStatus:
        return self.view.status_enum

    @property
    def priority(self) -> BackgroundTransferPriority:
        return BackgroundTransferPriority[self.view.priority]

    @priority.setter
    def priority(self, value: BackgroundTransferPriority) -> None:
        self._patch(priority=value.name)

    @property
    def cost_policy(self) -> BackgroundTransferCostPolicy:
        return BackgroundTransferCostPolicy[self.view.cost_policy]

    @cost_policy.setter
    def cost_policy(self, value: BackgroundTransferCostPolicy) -> None:
        self._patch(cost_policy=value.name)

    @property
    def transfer_group(self) -> BackgroundTransferGroup | None:
        name = self.view.group
        return None if name is None else BackgroundTransferGroup(name, self._group_store)

    @property
    def current_web_error_status(self) -> WebErrorStatus | None:
        return None if self.view.web_error is None else WebErrorStatus(self.view.web_error)

    @property
    def is_random_access_required(self) -> bool:
        return self.view.random_access

    @is_random_access_required.setter
    def is_random_access_required(self, value: bool) -> None:
        self._patch(random_access=bool(value))

    @property
    def expected_checksum(self) -> tuple[str, str] | None:
        spec = self.view.checksum
        if spec is None:
            return None
        algo, _, digest = spec.partition("=")
        return (algo, digest)

    @expected_checksum.setter
    def expected_checksum(self, spec: str | None) -> None:
        self._patch(checksum=spec)

    def set_request_header(self, name: str, value: str) -> None:
        """Sent from the next request on; a second value for a name is comma-joined."""
        headers = [list(h) for h in self.view.headers]
        for pair in headers:
            if pair[0].lower() == name.lower():
                pair[1] = f"{pair[1]}, {value}"
                break
        else:
            headers.append([name, value])
        self._patch(headers=headers)

    def remove_request_header(self, name: str) -> None:
        self._patch(headers=[h for h in self.view.headers if h[0].lower() != name.lower()])

    def make_current_in_transfer_group(self) -> None:
        self.apply(self._link.call(self._link.client.control(self.view.guid, "make_current")))

    def _patch(self, **fields: Any) -> None:
        self.apply(self._link.call(self._link.client.patch(self.view.guid, fields)))

    @property
    def connections(self) -> int:
        return self.view.connections

    @property
    def max_bytes_per_second(self) -> int:
        return self.view.max_bytes_per_second

    @max_bytes_per_second.setter
    def max_bytes_per_second(self, value: int) -> None:
        if value < 0:
            raise InvalidRequestError("max_bytes_per_second must be 0 (no limit) or more")
        self._patch(max_bytes_per_second=value)

    @property
    def dropped_sources(self) -> dict[str, str]:
        return dict(self.view.dropped_sources)

    @property
    def progress(self) -> BackgroundDownloadProgress:
        v = self.view
        return BackgroundDownloadProgress(
            v.bytes_received,
            v.total_bytes_to_receive,
            v.status_enum,
            v.has_restarted,
            v.has_response_changed,
        )

    def get_downloaded_ranges(self) -> list[BackgroundTransferFileRange]:
        ranges = self._link.call(self._link.client.ranges(self.view.guid))
        return [BackgroundTransferFileRange(o, n) for o, n in ranges]

    # -- reading while it downloads ------------------------------------------------------
    def get_result_stream_at(
        self, position: int = 0, *, timeout: float | None = None
    ) -> RemoteResultStream:
        """A stream of the file the service writes; a read waits (in the service) until
        the bytes at its position are there, then reads them from the file here."""
        return RemoteResultStream(self, position, timeout=timeout, seekable=False)

    def get_result_random_access_stream_reference(
        self, *, timeout: float | None = None
    ) -> RemoteResultStream:
        if not self.is_random_access_required:
            raise InvalidStateError(
                "get_result_random_access_stream_reference needs is_random_access_required"
            )
        return RemoteResultStream(self, 0, timeout=timeout, seekable=True)

    async def available(self, offset: int, want: int) -> int:
        """Run by the stream on the engine loop: the service answers when bytes are there."""
        return await self._link.acall(self._link.client.available(self.view.guid, offset, want))

    def get_response_information(self) -> ResponseInformation | None:
        """The last response the service's engine had for it (None before any)."""
        data = self._link.call(self._link.client.response(self.view.guid))
        return None if data is None else ResponseInformation(**data)

    def credentials(self) -> dict[str, Any]:
        return self._secret

    # -- starting and waiting -----------------------------------------------------------
    async def start_async(self, progress: ProgressCallback | None = None) -> RemoteOperation:
        """Start in the service; resolves on COMPLETED, raises on ERROR or cancel.
        Cancelling the awaiting task cancels the download, as in-process."""
        await self._remote_begin("start", progress, asyncio.get_running_loop())
        return await self._await_done()

    async def attach_async(self, progress: ProgressCallback | None = None) -> RemoteOperation:
        await self._remote_begin("attach", progress, asyncio.get_running_loop())
        return await self._await_done()

    def start(self, progress: ProgressCallback | None = None) -> RemoteOperation:
        self._link.call(self._remote_begin("start", progress, None))
        return self

    def attach(self, progress: ProgressCallback | None = None) -> RemoteOperation:
        self._link.call(self._remote_begin("attach", progress, None))
        return self

    async def _remote_begin(
        self, action: str, progress: ProgressCallback | None, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        if action == "start" and self.view.status != "IDLE":
            raise InvalidStateError(
                f"start needs an IDLE operation (this one is {self.view.status}); "
                "use attach_async for one found again"
            )
        if progress is not None:
            self._callbacks.append((progress, loop))
        if self._event_loop is None:
            self._event_loop = loop
        if self.view.ended:
            return
        link = self._link
        await self._send_recoverable()
        if self.ranges_downloaded and not self.wants_ranges:
            self.wants_ranges = True
            link.live[self.guid_str] = self
            await link.subscribe_ranges(self)
        view = await link.acall(link.client.control(self.view.guid, action, self._secret))
        self.apply(view)
        link.follow(self)

    async def _send_recoverable(self) -> None:
        """``recoverable_web_error_statuses`` is a plain set, as in-process: what it
        holds goes to the service when the operation starts, attaches or resumes."""
        wanted = sorted(s.value for s in self.recoverable_web_error_statuses)
        if wanted != self._recoverable_sent:
            link = self._link
            self.apply(await link.acall(link.client.patch(self.view.guid, {"recoverable": wanted})))
            self._recoverable_sent = wanted

    def wait(self, timeout: float | None = None) -> RemoteOperation:
        try:
            self._done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self.result_file}: not finished after {timeout} s") from None
        return self

    async def wait_async(self) -> RemoteOperation:
        """Cancelling the awaiting task leaves the download as it is."""
        await asyncio.shield(asyncio.wrap_future(self._done))
        return self

    async def _await_done(self) -> RemoteOperation:
        try:
            await asyncio.shield(asyncio.wrap_future(self._done))
        except asyncio.CancelledError:
            if not self.view.ended:
                await self._control_async("cancel")
            raise
        return self

    # -- control ------------------------------------------------------------------------
    def pause(self) -> None:
        self.apply(self._link.call(self._link.client.control(self.view.guid, "pause")))

    def resume(self) -> None:
        if self._done.done() and self.view.status == "ERROR":
            self._done = concurrent.futures.Future()
        self._link.call(self._send_recoverable())
        view = self._link.call(self._link.client.control(self.view.guid, "resume", self._secret))
        self.apply(view)
        self._link.follow(self)

    def cancel(self) -> None:
        self.apply(self._link.call(self._link.client.control(self.view.guid, "cancel")))

    async def _control_async(self, action: str) -> None:
        link = self._link
        self.apply(await link.acall(link.client.control(self.view.guid, action)))

    # -- events ---------------------------------------------------------------------------
    def apply(self, view: OpView) -> None:
        """A new state from the service: tell the callbacks, settle at the end."""
        with self._view_lock:
            changed = view != self.view
            self.view = view
        if changed:
            for callback, loop in list(self._callbacks):
                _deliver(loop, _progress_caller(callback), self)
        if view.ended:
            self._settle(view)

    def _settle(self, view: OpView) -> None:
        if self._done.done():
            return
        if view.status == "COMPLETED":
            self._done.set_result(None)
        elif view.status == "CANCELED":
            self._done.set_exception(
                TransferCanceled(f"{view.result_file}: canceled", guid=uuid.UUID(view.guid))
            )
        else:
            self._done.set_exception(_error_of(view))
        if self.completion_group is not None:
            self.completion_group.member_ended()

    def ranges_known(self, ranges: list[tuple[int, int]]) -> None:
        self._covered = merge_ranges(self._covered + ranges)

    def ranges_owed(self) -> bool:
        """Completed, and range events still to come (the service holds them back
        while our deferrals are open)."""
        total = self.view.total_bytes_to_receive
        return (
            self.wants_ranges
            and self.view.status == "COMPLETED"
            and total > 0
            and self._covered != [(0, total)]
        )

    def ranges_event(self, added: list[tuple[int, int]], restarted: bool) -> None:
        """Raise ``ranges_downloaded``; acknowledge once the handlers and every deferral
        they took are done (the service holds the next event back until then)."""
        if restarted:
            self._covered = []
        self.ranges_known(added)
        lock = threading.Lock()
        open_count = [1]
        link, guid = self._link, self.view.guid

        def release() -> None:
            with lock:
                open_count[0] -= 1
                last = open_count[0] == 0
            if last:
                link.send({"ack": guid})

        def make() -> Deferral:
            with lock:
                open_count[0] += 1
            return Deferral(release)

        args = BackgroundDownloadRangesDownloadedEventArgs(
            [BackgroundTransferFileRange(o, n) for o, n in added], restarted, make
        )

        def raise_event() -> None:
            try:
                for handler in self.ranges_downloaded.handlers():
                    result = handler(self, args)
                    with lock:
                        open_count[0] += 1  # an async handler holds the next event
                    if not run_handler(result, release):
                        release()
            finally:
                release()

        _deliver(self._event_loop, lambda _op: raise_event(), self)


def _progress_caller(callback: ProgressCallback) -> Callable[[RemoteOperation], None]:
    """The callback, an ``async def`` one run as a task of the loop it is called on."""

    def call(op: RemoteOperation) -> None:
        run_handler(callback(op))

    return call


def _deliver(loop: asyncio.AbstractEventLoop | None, fn: Any, op: RemoteOperation) -> None:
    """On the caller's loop when there was one, else on the link's thread."""
    target = loop if loop is not None and not loop.is_closed() else op._link.loop
    target.call_soon_threadsafe(fn, op)


def _error_of(view: OpView) -> TransferError:
    guid = uuid.UUID(view.guid)
    message = view.error or f"{view.result_file}: failed"
    if view.web_error is not None and 300 <= view.web_error < 600:
        return HttpError(message, status_code=view.web_error, guid=guid)
    return TransportError(message, guid=guid)
