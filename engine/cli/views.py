"""Progress views of the command line: rich bars on a terminal, silence elsewhere.

Callbacks arrive on the engine thread; rich's Progress takes its own lock, so the
views only translate an operation's progress into its columns.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from engine import BackgroundTransferStatus, DownloadOperation
from engine._bulk.hooks import Looked

S = BackgroundTransferStatus
ENDED = (S.COMPLETED, S.CANCELED, S.ERROR)

LOOK_EVERY = 2.0
"""Seconds between looks for operations waiting on the engine's conditions."""

_WAITS = {
    S.PAUSED_SYSTEM_POLICY: "free disk space",
    S.PAUSED_NO_NETWORK: "the network",
    S.PAUSED_COSTED_NETWORK: "a network that is not metered",
}


class Waits:
    """One line on stderr when downloads start waiting for what the engine waits out
    by itself (free disk space, the network), with ``-q`` too: a command that cannot
    go on otherwise says nothing for as long as it waits.  One line per cause and
    folder (a mirror's thousand files waiting for space make one), told again only
    after the wait ended."""

    def __init__(self, reserve: int) -> None:
        self._reserve = reserve
        self._told: set[tuple[BackgroundTransferStatus, str]] = set()

    def look(self, ops: Iterable[Looked]) -> None:
        waiting = [(st, op) for op in ops if (st := op.status) in _WAITS]
        now = {(st, str(op.result_file.parent)) for st, op in waiting}
        needs: dict[str, int] = {}  # the most a file of the folder waits to have room for
        for _, op in waiting:
            folder = str(op.result_file.parent)
            needs[folder] = max(needs.get(folder, 0), op.space_needed)
        for status, folder in sorted(now - self._told, key=lambda k: (k[0].value, k[1])):
            print(f"bgtransfer: {self._line(status, folder, needs[folder])}", file=sys.stderr)
        self._told = now

    def _line(self, status: BackgroundTransferStatus, folder: str, need: int) -> str:
        what = f"waiting for {_WAITS[status]}"
        if status is S.PAUSED_SYSTEM_POLICY:
            try:
                st = os.statvfs(folder)  # (shutil is 2 ms of every command's start-up)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = -1
            shown = f"{free >> 20} MiB free, " if free >= 0 else ""
            what += f" in {folder} ({shown}{self._reserve >> 20} MiB kept free"
            if need and free >= 0:
                more = max(0, need + self._reserve - free)
                what += f"; a file of {need >> 20} MiB needs {-(-more >> 20)} MiB more"
            what += ")"
        return what + "; it goes on by itself (Ctrl-C pauses)"


def interactive(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def progress_bars(total_bar: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
        console=Console(stderr=True),
        transient=False,
    )


class FileView:
    """One bar per operation: bytes, speed, ETA, connections and status."""

    def __init__(self, quiet: bool) -> None:
        self._progress = progress_bars(False) if interactive(quiet) else None
        self._tasks: dict[object, Any] = {}
        self._lock = threading.Lock()
        if self._progress is not None:
            self._progress.start()

    @property
    def shown(self) -> bool:
        """Whether there are bars at all (not quiet, and a terminal)."""
        return self._progress is not None

    def watch(self, op: DownloadOperation) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._tasks[op.guid] = self._progress.add_task(
                op.result_file.name, total=None, extra=""
            )

    def update(self, op: DownloadOperation) -> None:
        if self._progress is None:
            return
        p = op.progress
        status = p.status
        extra = f"{op.connections} conn" if status is S.RUNNING else status.name.lower()
        with self._lock:
            task = self._tasks.get(op.guid)
        if task is not None:
            self._progress.update(
                task,
                completed=p.bytes_received,
                total=p.total_bytes_to_receive or None,
                extra=extra,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


class MirrorView(FileView):
    """A total bar over every file, with the count of those done (as curl -Z counts
    its transfers), and bars for the files in flight (removed when done).  The total
    bar's size is known once every file to fetch has told its own (or ended)."""

    def __init__(self, quiet: bool, files: int, already: int = 0) -> None:
        super().__init__(quiet)
        self._done_bytes = 0
        self._live: dict[object, int] = {}
        self._sizes: dict[object, int] = {}  # the files to fetch whose size is known
        self._to_fetch = files - already
        self._files = files
        self._completed = already  # complete before the command: skipped
        self._failed = 0
        self._lean = [0, 0]  # small files ended (no operation), and their bytes
        self._listed = files > 0  # else the list is streamed: its length comes at its end
        self._total = None
        if self._progress is not None:
            shown = f"{files} files" if files else "files"
            self._total = self._progress.add_task(shown, total=None, extra=self._count())

    def _count(self) -> str:
        failed = f", {self._failed} failed" if self._failed else ""
        files = self._files if self._listed else "?"
        return f"{self._completed}/{files} done{failed}"

    def update(self, op: DownloadOperation) -> None:
        if self._progress is None or self._total is None:
            return
        p = op.progress
        with self._lock:
            if p.total_bytes_to_receive or p.status in ENDED:
                self._sizes[op.guid] = p.total_bytes_to_receive or p.bytes_received
            if p.status in ENDED:
                task = self._tasks.pop(op.guid, None)
                if task is not None:
                    self._progress.remove_task(task)
                    self._done_bytes += p.bytes_received
                    if p.status is S.COMPLETED:
                        self._completed += 1
                    else:
                        self._failed += 1
                self._live.pop(op.guid, None)
            else:
                self._live[op.guid] = p.bytes_received
            done = self._done_bytes + sum(self._live.values())
            count = self._count()
            known = self._listed and len(self._sizes) + self._lean[0] >= self._to_fetch
            total = sum(self._sizes.values()) + self._lean[1] if known else None
        if p.status not in ENDED:
            super().update(op)
        self._progress.update(self._total, completed=done, total=total, extra=count)

    def ended(self, size: int, completed: bool) -> None:
        """A small file ended without an operation (the bulk job's lean path)."""
        if self._progress is None or self._total is None:
            return
        with self._lock:
            self._lean[0] += 1
            self._lean[1] += size
            self._done_bytes += size
            if completed:
                self._completed += 1
            else:
                self._failed += 1
            done = self._done_bytes + sum(self._live.values())
            count = self._count()
            known = self._listed and len(self._sizes) + self._lean[0] >= self._to_fetch
            total = sum(self._sizes.values()) + self._lean[1] if known else None
        self._progress.update(self._total, completed=done, total=total, extra=count)

    def skipped(self, count: int) -> None:
        """Files found complete as the list is read."""
        with self._lock:
            self._completed += count
            self._to_fetch -= count
            shown = self._count()
        if self._progress is not None and self._total is not None:
            self._progress.update(self._total, extra=shown)

    def counted(self, files: int) -> None:
        """The list is read to its end: ``files`` in all."""
        with self._lock:
            self._to_fetch += files - self._files
            self._files = files
            self._listed = True
            count = self._count()
        if self._progress is not None and self._total is not None:
            self._progress.update(self._total, description=f"{files} files", extra=count)

    def finished(self, completed: int, files: int) -> None:
        if self._progress is not None and self._total is not None:
            with self._lock:
                self._completed, self._files = completed, files
                count = self._count()
            self._progress.update(self._total, extra=count)
