"""``BackgroundDownloader(service=True)``: the same API, with the operations in the service.

``ServiceDownloader`` is a ``BackgroundDownloader`` whose ``create_download`` and
``get_current_downloads`` ask the service; ``RemoteOperation`` has the methods and
properties of ``DownloadOperation`` (status, progress, callbacks, ``ranges_downloaded``
with deferrals, pause/resume/cancel, start/attach and their waits), each answered by
the service.  A process that ends, however abruptly, leaves its downloads running;
another process finds them with ``get_current_downloads`` and attaches.

Credentials given to the downloader go to the service in request bodies, for each
create, attach and resume; after the service restarts, an operation that needs them
waits paused until a process that has them attaches (this one does so by itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from engine._state.store import default_state_dir
from engine.downloader import (
    BackgroundDownloader,
    BackgroundTransferCompletionGroup,
    BackgroundTransferGroup,
)
from engine.operation import DownloadOperation
from engine.service.link import Link
from engine.service.operation import RemoteOperation
from engine.service.protocol import OpView, credentials_json
from engine.values import (
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    Credential,
)


class ServiceDownloader(BackgroundDownloader):
    """What ``BackgroundDownloader(service=True)`` makes."""

    def __init__(
        self,
        *,
        state_dir: os.PathLike[str] | str | None = None,
        transfer_group: BackgroundTransferGroup | None = None,
        method: str = "GET",
        priority: BackgroundTransferPriority = BackgroundTransferPriority.DEFAULT,
        cost_policy: BackgroundTransferCostPolicy = BackgroundTransferCostPolicy.DEFAULT,
        server_credential: Credential | None = None,
        proxy_credential: Credential | None = None,
        proxy: str | None = None,
        completion_group: BackgroundTransferCompletionGroup | None = None,
        max_connections_per_file: int | Literal["auto"] = "auto",
        block_size: int = 1 << 20,
        service: bool = True,
        **_engine_only: Any,
    ) -> None:
        """As ``BackgroundDownloader``; ``config`` and ``network_monitor`` belong to the
        service's engine and are ignored here."""
        super().__init__(
            state_dir=state_dir,
            transfer_group=transfer_group,
            method=method,
            priority=priority,
            cost_policy=cost_policy,
            server_credential=server_credential,
            proxy_credential=proxy_credential,
            proxy=proxy,
            completion_group=completion_group,
            max_connections_per_file=max_connections_per_file,
            block_size=block_size,
        )
        path = Path(state_dir) if state_dir is not None else default_state_dir()
        self._link = Link.to(path.expanduser().absolute())

    def _credentials(self) -> dict[str, Any]:
        s = self._settings
        return credentials_json(s.server_credential, s.proxy_credential)

    def create_download(
        self,
        uri: str,
        result_file: os.PathLike[str] | str,
        request_body_file: os.PathLike[str] | str | None = None,
        *,
        sources: Sequence[str] = (),
    ) -> RemoteOperation:
        """A new operation in the service, in IDLE: ``start_async`` starts it there,
        from ``uri`` and the other ``sources`` of the same content."""
        body: dict[str, Any] = {
            "uri": uri,
            "result_file": os.path.abspath(os.fspath(result_file)),
            "start": False,
            "method": self.method,
            "priority": self.priority.name,
            "cost_policy": self.cost_policy.name,
            "max_connections": (
                0 if self.max_connections_per_file == "auto" else self.max_connections_per_file
            ),
            "block_size": self.block_size,
            "headers": [list(h) for h in self._headers],
        }
        if sources:
            body["sources"] = list(sources)
        if request_body_file is not None:
            body["body_file"] = os.path.abspath(os.fspath(request_body_file))
        if self.transfer_group is not None:
            body["group"] = self.transfer_group.name
        if self._settings.proxy is not None:
            body["proxy"] = self._settings.proxy
        if secret := self._credentials():
            body["credentials"] = secret
        view = self._link.call(self._link.client.create(body))
        op = self._adopt_view(view)
        group = self._settings.completion_group
        if group is not None:
            group.add_member(op)
            op.completion_group = group
        return op

    def get_current_downloads(self, *, include_groups: bool = False) -> list[DownloadOperation]:
        """As in-process: those of no transfer group, unless ``include_groups``."""
        views = self._link.call(self._link.client.current())
        return [self._adopt_view(v) for v in views if include_groups or v.group is None]

    def get_current_downloads_for_transfer_group(
        self, group: BackgroundTransferGroup
    ) -> list[DownloadOperation]:
        views = self._link.call(self._link.client.current())
        return [self._adopt_view(v) for v in views if v.group == group.name]

    async def get_current_downloads_async(
        self, *, include_groups: bool = False
    ) -> list[DownloadOperation]:
        views = await self._link.acall(self._link.client.current())
        return [self._adopt_view(v) for v in views if include_groups or v.group is None]

    async def get_current_downloads_for_transfer_group_async(
        self, group: BackgroundTransferGroup
    ) -> list[DownloadOperation]:
        views = await self._link.acall(self._link.client.current())
        return [self._adopt_view(v) for v in views if v.group == group.name]

    def _adopt_view(self, view: OpView) -> RemoteOperation:
        op = self._link.ops.get(view.guid)
        if op is None:
            op = RemoteOperation(self._link, view, self._credentials(), self._store)
            self._link.ops[view.guid] = op
        else:
            op.apply(view)
        return op


__all__ = ["RemoteOperation", "ServiceDownloader"]
