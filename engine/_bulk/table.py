"""A bulk job's rows in the state database: one per file, written a batch at a time.

Each file of a job has a row from the moment it is read from the caller's list: its
URL, its result file, its status (``BackgroundTransferStatus`` values), its size once
done, the error it failed with, and the guid of the full operation that took it over
(a large file).  Rows are inserted and updated in batches (one ``executemany`` a
batch, in the engine pass's transaction): a commit, or even a statement, a file cost
more than the request of a small file.  A row that says RUNNING or IDLE after the
process is gone is a file to fetch again: its body was only ever in memory, and its
partial file, if any, is never under the final name.
"""

from __future__ import annotations

import threading
from typing import Any

from engine._state.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bulk_files (
    job TEXT NOT NULL,
    result_file TEXT NOT NULL,
    uri TEXT NOT NULL,
    checksum TEXT,
    status INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    guid TEXT,
    PRIMARY KEY (job, result_file)
) WITHOUT ROWID
"""

COMPLETED, CANCELED = 5, 6
_UPSERT = (
    "INSERT INTO bulk_files (job, result_file, uri, checksum, status) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (job, result_file) DO UPDATE SET uri = excluded.uri, "
    "checksum = excluded.checksum, error = NULL, "
    f"size = CASE excluded.status WHEN {COMPLETED} THEN size ELSE 0 END, "
    f"guid = CASE excluded.status WHEN {COMPLETED} THEN guid ELSE NULL END, "
    f"status = CASE status WHEN {CANCELED} THEN status ELSE excluded.status END"
)
"""A file listed again keeps a cancel (cancelled on its own, it stays so); one found
complete keeps what its row said of it; anything else starts over."""
_UPDATE = (
    "UPDATE bulk_files SET status = ?, size = ?, error = ?, guid = ? "
    "WHERE job = ? AND result_file = ?"
)
_BATCH = 512
"""Rows a batch: ``add`` and ``change`` write one when it is full (a driver that
appends itself is flushed by its ticks)."""

_made: set[int] = set()


class JobTable:
    """The rows of job ``job``, with the writes not made yet."""

    def __init__(self, store: Store, job: str) -> None:
        self.store = store
        self.job = job
        if id(store) not in _made:  # a store lives as long as the process
            store.add_schema(_SCHEMA)
            _made.add(id(store))
        self.new: list[tuple[Any, ...]] = []
        """Rows to insert: (job, result_file, uri, checksum, status)."""
        self.changed: list[tuple[Any, ...]] = []
        """Changes to write: (status, size, error, guid, job, result_file).  A driver
        appends to both lists itself (a call a file cost more than the append)."""
        self._lock = threading.Lock()  # held by flush: a later batch never overtakes

    def add(self, path: str, url: str, checksum: str | None, status: int) -> None:
        """A file read from the list (written with the next batch)."""
        self.new.append((self.job, path, url, checksum, status))
        if len(self.new) >= _BATCH:
            self.flush()

    def change(
        self,
        path: str,
        status: int,
        size: int = 0,
        error: str | None = None,
        guid: str | None = None,
    ) -> None:
        """A file's new status (written with the next batch)."""
        self.changed.append((status, size, error, guid, self.job, path))
        if len(self.changed) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Write what is pending: the new rows first, then the changes.  While a run
        adds rows (on the engine thread), only that thread flushes: a row appended
        to a batch another thread had taken would be lost."""
        with self._lock:  # held while writing: a later batch never overtakes this one
            if self.new:
                self.store.write_many(_UPSERT, self.new)
                self.new.clear()
            if self.changed:
                self.store.write_many(_UPDATE, self.changed)
                self.changed.clear()

    def cancel(self, path: str) -> None:
        """Mark one file cancelled now, read from the list yet or not (a row with no
        URL until it is: the upsert keeps the cancel)."""
        self.flush()
        self.store.write_many(
            "INSERT INTO bulk_files (job, result_file, uri, status) VALUES (?, ?, '', ?) "
            "ON CONFLICT (job, result_file) DO UPDATE SET status = excluded.status",
            [(self.job, path, CANCELED)],
        )

    def canceled(self) -> set[str]:
        """The result files cancelled on their own (a new run leaves them be)."""
        rows = self.store.rows(
            "SELECT result_file FROM bulk_files WHERE job = ? AND status = ?", (self.job, CANCELED)
        )
        return {str(r[0]) for r in rows}

    def files(self) -> list[tuple[str, str, int, int, str | None, str | None]]:
        """(result_file, uri, status, size, error, guid) of every file, pending writes
        included."""
        self.flush()
        rows = self.store.rows(
            "SELECT result_file, uri, status, size, error, guid FROM bulk_files "
            "WHERE job = ? ORDER BY result_file",
            (self.job,),
        )
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def forget(self) -> None:
        """Drop the job's rows (``BulkDownload.forget``)."""
        with self._lock:
            self.new.clear()
            self.changed.clear()
        self.store.write_many("DELETE FROM bulk_files WHERE job = ?", [(self.job,)])
