"""What the operations of one downloader share: the state database, the transfer
settings, the view of the network, credentials and the completion group."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine._net.ratelimit import Budget
from engine._ops.interfaces import EngineOperation
from engine._runtime.conditions import NetworkMonitor, free_bytes
from engine._state.store import OpRecord, Store
from engine.config import TransferConfig
from engine.values import BackgroundTransferStatus, Credential

if TYPE_CHECKING:  # for the type only: it is above this module
    from engine.groups import BackgroundTransferCompletionGroup

_ERROR = BackgroundTransferStatus.ERROR
RANDOM_ACCESS_BLOCK = 1 << 16
"""The largest block of a random-access operation (see ``Settings.config_for``)."""

AUTO = 0
"""``max_connections`` stored for ``max_connections_per_file="auto"``."""


@dataclasses.dataclass
class Settings:
    """What a downloader's operations share: the store, the network view, secrets."""

    store: Store
    config: TransferConfig
    network_monitor: NetworkMonitor
    server_credential: Credential | None = None
    proxy_credential: Credential | None = None
    proxy: str | None = None
    completion_group: BackgroundTransferCompletionGroup | None = None
    free_space_reserve: int = -1
    budget: Budget = dataclasses.field(default_factory=Budget)
    """The downloader's total rate, shared by its operations' requests."""
    _free: dict[str, tuple[float, int | None]] = dataclasses.field(default_factory=dict, repr=False)
    _configs: dict[tuple[int, int], TransferConfig] = dataclasses.field(
        default_factory=dict, repr=False
    )
    _configs_of: TransferConfig | None = dataclasses.field(default=None, repr=False)
    """The ``config`` that ``_configs`` were derived from."""

    def __post_init__(self) -> None:
        if self.free_space_reserve < 0:
            self.free_space_reserve = self.config.free_space_reserve

    def config_for(self, rec: OpRecord) -> TransferConfig:
        """The operation's transfer settings.  Random access uses blocks of 64 KiB at most:
        a read waits for the whole block under its offset, and at 20 MB/s a 1 MiB block
        alone would take 50 ms."""
        block = min(rec.block_size, RANDOM_ACCESS_BLOCK) if rec.random_access else rec.block_size
        if self._configs_of is not self.config:  # not hashed: 30 fields for each file
            self._configs.clear()
            self._configs_of = self.config
        key = (rec.max_connections, block)
        config = self._configs.get(key)
        if config is None:
            if len(self._configs) > 64:
                self._configs.clear()
            auto = rec.max_connections == AUTO  # the cap of 64, the count adapts
            config = dataclasses.replace(
                self.config,
                connections=64 if auto else rec.max_connections,
                adaptive=auto,
                block_size=block,
            )
            self._configs[key] = config
        return config

    def disk_reserve_exceeded(self, result: str) -> bool:
        """Free space under the reserve.  Many operations start at once into one folder
        (a mirror): a statvfs younger than half a poll interval answers for all of them."""
        folder = os.path.dirname(result)  # strs: a Path's parent, or its str, cost a call
        now = time.monotonic()
        seen = self._free.get(folder)
        if seen is None or now - seen[0] > min(0.25, self.config.poll_interval / 2):
            try:
                seen = (now, free_bytes(Path(folder)))
            except OSError:
                return False  # the write itself will report what is wrong with the path
            if len(self._free) > 64:
                self._free.clear()
            self._free[folder] = seen
        free = seen[1]
        return free is not None and free < self.free_space_reserve

    def ended(self, op: EngineOperation) -> None:
        """An operation reached COMPLETED, CANCELED or ERROR."""
        body = op.record.body_file
        if (
            body is not None
            and op.status is not _ERROR
            and Path(body).parent == self.store.state_dir / "bodies"
        ):
            Path(body).unlink(missing_ok=True)  # a body we kept only for re-sending
        if self.completion_group is not None:
            self.completion_group.member_ended()
