"""A create request, checked (``protocol``), made into an operation of the engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.downloader import BackgroundDownloader, BackgroundTransferGroup
from engine.errors import InvalidRequestError
from engine.operation import DownloadOperation
from engine.service.protocol import enum_member
from engine.values import (
    BackgroundTransferBehavior,
    BackgroundTransferCostPolicy,
    BackgroundTransferPriority,
    Credential,
)
from engine.web_error import WebErrorStatus


@dataclasses.dataclass
class CreateRequest:
    fields: dict[str, Any]

    @property
    def start(self) -> bool:
        return bool(self.fields.get("start", True))

    @property
    def server(self) -> Credential | None:
        found: Credential | None = self.fields.get("credentials", {}).get("server")
        return found

    @property
    def proxy(self) -> Credential | None:
        found: Credential | None = self.fields.get("credentials", {}).get("proxy")
        return found

    def create(self, state_dir: Path) -> DownloadOperation:
        f = self.fields
        try:
            recoverable = {WebErrorStatus(code) for code in f.get("recoverable", [])}
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        group = None
        if "group" in f:
            group = BackgroundTransferGroup.create_group(f["group"], state_dir=state_dir)
            if "group_behavior" in f:
                group.transfer_behavior = enum_member(
                    BackgroundTransferBehavior, f["group_behavior"], "group_behavior"
                )
        d = BackgroundDownloader(
            state_dir=state_dir,
            transfer_group=group,
            method=f.get("method", "GET"),
            priority=enum_member(
                BackgroundTransferPriority, f.get("priority", "DEFAULT"), "priority"
            ),
            cost_policy=enum_member(
                BackgroundTransferCostPolicy, f.get("cost_policy", "DEFAULT"), "cost_policy"
            ),
            server_credential=self.server,
            proxy_credential=self.proxy,
            proxy=f.get("proxy"),
            max_connections_per_file=f.get("max_connections", 0) or "auto",  # 0: auto
            block_size=f.get("block_size", 1 << 20),
        )
        for name, value in f.get("headers", []):
            d.set_request_header(name, value)
        sources = f.get("sources", [])
        if not all(isinstance(url, str) for url in sources):
            raise InvalidRequestError("sources must be a list of URLs")
        op = d.create_download(f["uri"], f["result_file"], f.get("body_file"), sources=sources)
        if "max_bytes_per_second" in f:
            op.max_bytes_per_second = f["max_bytes_per_second"]
        if "checksum" in f:
            op.expected_checksum = f["checksum"]
        if f.get("random_access"):
            op.is_random_access_required = True
        op.recoverable_web_error_statuses |= recoverable
        return op
