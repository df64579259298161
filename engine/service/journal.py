"""What the service must remember that the engine's state database does not.

The engine forgets an operation once it ends (its row is deleted), and it stores no
credential nor whose operation is whose.  The service keeps, in its own SQLite file
beside the state database (0600, WAL, committed before it answers):

* ``wanted``: the operations it drives (started, resumed or attached through it and
  not paused by a client): what it resumes when it starts again, after a ``service
  stop`` or a kill -9;
* ``ended``: how each of its operations ended, so that a client that comes back
  after its download finished (the service may have exited meanwhile) is told;
* ``secret``: which operations were given credentials (a flag, never the secret):
  after a restart they wait paused until a client brings the credentials again;
* the start count, which is the epoch every event carries.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wanted (guid TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS secret (guid TEXT PRIMARY KEY, server INTEGER, proxy INTEGER);
CREATE TABLE IF NOT EXISTS ended (
    guid TEXT PRIMARY KEY, status TEXT, result_file TEXT, uri TEXT, total INTEGER,
    error TEXT, web_error INTEGER, at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
"""

ENDED_KEPT = 10_000
"""Endings remembered; the oldest are forgotten past this many."""


@dataclasses.dataclass(frozen=True)
class Ending:
    guid: str
    status: str
    result_file: str
    uri: str
    total: int
    error: str | None
    web_error: int | None


class Journal:
    """The service's own table of operations.  One thread (the service's loop) uses it."""

    def __init__(self, path: Path) -> None:
        old = os.umask(0o077)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # survives a kill -9
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def close(self) -> None:
        self._db.close()

    def next_epoch(self) -> int:
        """A number no earlier start of this service had."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        epoch = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
        return int(epoch)

    def want(self, guid: str, *, server: bool = False, proxy: bool = False) -> None:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO wanted VALUES (?)", (guid,))
            if server or proxy:
                self._db.execute(
                    "INSERT OR REPLACE INTO secret VALUES (?, ?, ?)", (guid, server, proxy)
                )

    def unwant(self, guid: str) -> None:
        self._db.execute("DELETE FROM wanted WHERE guid = ?", (guid,))

    def wanted(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT guid FROM wanted")}

    def needs_secret(self, guid: str) -> tuple[bool, bool]:
        """(server, proxy): the credentials an operation was given, to be given again."""
        row = self._db.execute(
            "SELECT server, proxy FROM secret WHERE guid = ?", (guid,)
        ).fetchone()
        return (bool(row[0]), bool(row[1])) if row else (False, False)

    def ended(self, ending: Ending) -> None:
        with self._db:
            self._db.execute("DELETE FROM wanted WHERE guid = ?", (ending.guid,))
            self._db.execute("DELETE FROM secret WHERE guid = ?", (ending.guid,))
            self._db.execute(
                "INSERT OR REPLACE INTO ended VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ending.guid,
                    ending.status,
                    ending.result_file,
                    ending.uri,
                    ending.total,
                    ending.error,
                    ending.web_error,
                    time.time(),
                ),
            )
            self._db.execute(
                "DELETE FROM ended WHERE guid NOT IN "
                "(SELECT guid FROM ended ORDER BY at DESC LIMIT ?)",
                (ENDED_KEPT,),
            )

    def reopened(self, guid: str) -> None:
        """An ERROR resumed: it has not ended after all."""
        self._db.execute("DELETE FROM ended WHERE guid = ?", (guid,))

    def ending(self, guid: str) -> Ending | None:
        row = self._db.execute(
            "SELECT guid, status, result_file, uri, total, error, web_error FROM ended "
            "WHERE guid = ?",
            (guid,),
        ).fetchone()
        return Ending(*row) if row else None
