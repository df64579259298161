"""The client's bar for a mirror that runs on a cluster.

Each running shard sends its bytes and files done every half second (``_task``);
a shard that runs again elsewhere after its worker died starts its count over, so
only the latest run of each shard counts.  A shard that ended counts by its record.
Messages arrive on the client's event-loop thread, hence the lock.
"""

from __future__ import annotations

import threading
from typing import Any

from engine.cli.views import interactive, progress_bars


class ClusterView:
    """One total bar: bytes so far, files done of all, failures; nothing when quiet."""

    def __init__(self, quiet: bool, files: int, mirror: str) -> None:
        self._files = files
        self._mirror = mirror
        self._lock = threading.Lock()
        self._live: dict[str, tuple[str, int, int, int]] = {}
        """Running shards: run, bytes, files done, failed (its latest message)."""
        self._ended: set[str] = set()
        self._totals = [0, 0, 0]  # bytes, files complete, failed: of ended shards
        self._progress = progress_bars(True) if interactive(quiet) else None
        self._bar = None
        if self._progress is not None:
            self._bar = self._progress.add_task(f"{files} files", total=None, extra="")
            self._progress.start()

    def message(self, event: tuple[float, dict[str, Any]]) -> None:
        """A running shard's progress (a Dask event: scheduler time, message)."""
        msg = event[1]
        if msg.get("mirror") != self._mirror:
            return  # another mirror's, on the same cluster
        shard = msg["shard"]
        with self._lock:
            if shard in self._ended:
                return  # a late message of a run that ended, or of a zombie
            self._live[shard] = (msg["run"], msg["bytes"], msg["done"], msg["failed"])
        self._show()

    def ended(self, shard: str, size: int, complete: int, failed: int) -> None:
        with self._lock:
            self._ended.add(shard)
            self._live.pop(shard, None)
            for i, value in enumerate((size, complete, failed)):
                self._totals[i] += value
        self._show()

    def _show(self) -> None:
        if self._progress is None or self._bar is None:
            return
        with self._lock:
            size, complete, failed = self._totals
            for _, b, c, f in self._live.values():
                size, complete, failed = size + b, complete + c, failed + f
        count = f"{complete}/{self._files} done" + (f", {failed} failed" if failed else "")
        self._progress.update(self._bar, completed=size, extra=count)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
