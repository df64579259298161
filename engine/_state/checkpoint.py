"""The write-ahead log's checkpoints, on a thread of their own (see ``Checkpointer``)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path


class Checkpointer:
    """Copies the write-ahead log back into the database, on a thread of its own.

    SQLite does it itself by default, on the connection that commits when the log
    passes 1000 pages, and that connection then waits for two fsyncs: the engine
    loop would stall for milliseconds every few hundred files.  Here a thread with its own
    connection runs a passive checkpoint (it never blocks a writer) half a second
    after commits were poked in; the loop's connection checkpoints itself only as a
    backstop, if the log ever passes BACKSTOP pages."""

    def __init__(self, db: Path) -> None:
        self._db = db
        self._due = threading.Event()
        threading.Thread(target=self._run, name="bgtransfer-checkpoint", daemon=True).start()

    def poke(self) -> None:
        self._due.set()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._db, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error:
            return  # the backstop checkpoints instead
        while True:
            self._due.wait()
            time.sleep(0.5)  # let the commits of a busy moment gather
            self._due.clear()
            with contextlib.suppress(sqlite3.Error):  # busy: the next poke tries again
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")


BACKSTOP = 16384
"""Pages of write-ahead log (64 MiB) past which the committing connection checkpoints."""
