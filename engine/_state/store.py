"""The state database: every operation and group, in SQLite (WAL) under the state directory.

Why SQLite: it is embedded (no server to start), a committed statement survives the
process being killed, and a partial unique index makes "one live operation per
result file" hold across processes, not only inside one.  The directory is created
0700 and the database 0600: it holds URIs and request headers.  Credentials are
never written here (they live in memory only; see README).

Group commit: on the engine thread, the writes of one pass of the loop share one
transaction, committed as soon as the loop gets back to its queue (``call_soon``).
A mirror writes three rows a file, and a commit each costs more than the statements
do.  Every statement still runs at once, so a
refusal (the unique index) raises at the call; what must not be seen before it is
durable (a status reported, an outcome resolved) waits in ``when_durable``.  A
write from any other thread commits at once, and the open group with it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import errno
import json
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from engine._runtime.loop import engine_here
from engine._runtime.once import PerProcess
from engine._state.checkpoint import BACKSTOP, Checkpointer
from engine._state.trust import check_trusted
from engine.errors import ResultFileInUseError, StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    guid TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    uri TEXT NOT NULL,
    result_file TEXT NOT NULL,
    method TEXT NOT NULL,
    body_file TEXT,
    group_name TEXT,
    priority INTEGER NOT NULL,
    cost_policy INTEGER NOT NULL,
    random_access INTEGER NOT NULL,
    recoverable TEXT NOT NULL,
    headers TEXT NOT NULL,
    max_connections INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    status INTEGER NOT NULL,
    web_error INTEGER,
    error_message TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    checksum TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]',
    max_rate INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS one_live_operation_per_result ON operations(result_file)
    WHERE status NOT IN (5, 6) AND NOT (status = 7 AND acknowledged = 1);
CREATE TABLE IF NOT EXISTS ended (
    guid TEXT NOT NULL,
    uri TEXT NOT NULL,
    result_file TEXT NOT NULL,
    status INTEGER NOT NULL,
    ended REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS remember_ended BEFORE DELETE ON operations BEGIN
    INSERT INTO ended VALUES (old.guid, old.uri, old.result_file,
        CASE old.status WHEN 6 THEN 6 ELSE 5 END, old.updated);
END;
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    behavior INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    guid TEXT PRIMARY KEY,
    answer TEXT,
    made REAL NOT NULL
);
"""
"""``operations`` is keyed by its guid alone (WITHOUT ROWID: a rowid table kept the
guid in an index of its own, one b-tree more to change for every row inserted and
deleted, and a commit of a mirror's rows wrote three pages of log instead of two).
A database made before keeps its rowid table: the statements are the same for both.

``ended``: what ``bgtransfer list --all`` shows of the operations that finished.  A
trigger fills it as their rows go (in SQLite: not a Python call more a file), a row
marked CANCELED first is remembered as canceled, any other as completed, with the
time of its last change; ``forget_ended`` empties it of the old ones.  A plain table
with no key: a row appended to it costs a small part of one put under a primary
key, and a mirror appends one for every small file.

``requests``: a cancel asked by a process of the operation another one drives
(engine/_ops/cross_process.py).  ``answer`` is NULL until the driver takes it ('taken'),
then 'done' or 'refused: why'."""


_ADDED = {
    "sources": "TEXT NOT NULL DEFAULT '[]'",
    "max_rate": "INTEGER NOT NULL DEFAULT 0",
}
"""Columns added after databases were made with ``operations``: name -> declaration."""


def _add_columns(db: sqlite3.Connection) -> None:
    """A database made before a column of ``_ADDED`` existed gets it, with its default
    (no extra sources, no rate limit)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(operations)")}
    for name, declaration in _ADDED.items():
        if name not in columns:
            db.execute(f"ALTER TABLE operations ADD COLUMN {name} {declaration}")


FINISHED_SQL = "status IN (5, 6) OR (status = 7 AND acknowledged = 1)"


@dataclasses.dataclass
class OpRecord:
    """One row of ``operations``: what an operation is, and where it got to."""

    guid: str
    seq: int
    uri: str
    result_file: str
    method: str
    body_file: str | None
    group_name: str | None
    priority: int
    cost_policy: int
    random_access: bool
    recoverable: list[int]
    headers: list[tuple[str, str]]
    max_connections: int
    block_size: int
    status: int
    web_error: int | None = None
    error_message: str | None = None
    acknowledged: bool = False
    total: int = 0
    checksum: str | None = None
    """``algo=hex`` the finished file must match (beyond the Windows API)."""
    created: float = dataclasses.field(default_factory=time.time)
    updated: float = dataclasses.field(default_factory=time.time)
    sources: list[str] = dataclasses.field(default_factory=list)
    """More URLs of the same content (beyond the Windows API)."""
    max_rate: int = 0
    """Its own ``max_bytes_per_second`` (0: none), kept so a resume keeps the limit."""

    def to_row(self) -> tuple[Any, ...]:
        """The row's values in column order (one C call gathers them: a comprehension
        over the fields was a tenth of a small file's bytecode)."""
        row = list(_VALUES(self))
        row[_RECOVERABLE] = json.dumps(self.recoverable) if self.recoverable else "[]"
        row[_HEADERS] = json.dumps(self.headers) if self.headers else "[]"
        row[_SOURCES] = json.dumps(self.sources) if self.sources else "[]"
        row[_RANDOM_ACCESS] = int(self.random_access)
        row[_ACKNOWLEDGED] = int(self.acknowledged)
        return tuple(row)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OpRecord:
        data = dict(row)
        data["recoverable"] = json.loads(data["recoverable"])
        data["headers"] = [tuple(h) for h in json.loads(data["headers"])]
        data["sources"] = json.loads(data["sources"])
        data["random_access"] = bool(data["random_access"])
        data["acknowledged"] = bool(data["acknowledged"])
        return cls(**data)


_COLUMNS = [f.name for f in dataclasses.fields(OpRecord)]
_VALUES = operator.attrgetter(*_COLUMNS)
_RECOVERABLE, _HEADERS = _COLUMNS.index("recoverable"), _COLUMNS.index("headers")
_SOURCES = _COLUMNS.index("sources")
_RANDOM_ACCESS, _ACKNOWLEDGED = _COLUMNS.index("random_access"), _COLUMNS.index("acknowledged")
_INSERT = (
    f"INSERT INTO operations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


def default_state_dir() -> Path:
    """$BGTRANSFER_STATE_DIR, else $XDG_STATE_HOME/bgtransfer, else ~/.local/state/bgtransfer."""
    explicit = os.environ.get("BGTRANSFER_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "bgtransfer"


_POKE_EVERY = 64
"""Commits between pokes of the checkpointer."""


class Store:
    """One connection per process and directory, shared by every thread under a lock."""

    _open: ClassVar[dict[Path, Store]] = {}
    _open_lock = threading.Lock()

    @classmethod
    def at(cls, state_dir: os.PathLike[str] | str | None) -> Store:
        path = Path(state_dir) if state_dir is not None else default_state_dir()
        path = path.expanduser().absolute()
        with cls._open_lock:
            if path not in cls._open:
                cls._open[path] = cls(path)
            return cls._open[path]

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = state_dir / "operations.sqlite3"
            check_trusted(state_dir, db)
            old = os.umask(0o077)  # the database and its -wal/-shm files: owner only
            try:
                self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
                self._db.row_factory = sqlite3.Row
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a commit survives the process being killed (the promise
                # here); FULL would add an fsync per status change, 5000 of them for a mirror.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA busy_timeout=10000")
                self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP}")
                self._db.execute(f"PRAGMA journal_size_limit={BACKSTOP * 4096}")
                self._db.executescript(_SCHEMA)
                _add_columns(self._db)
            finally:
                os.umask(old)
            os.chmod(db, 0o600)
        except StorageError:
            raise
        except (OSError, sqlite3.Error) as exc:
            code, why = getattr(exc, "errno", None) or errno.EIO, str(exc)
            if isinstance(exc, FileExistsError) and not state_dir.is_dir():
                code, why = errno.ENOTDIR, "not a directory"  # a file in the way
            elif isinstance(exc, OSError) and exc.strerror:
                named = exc.filename not in (None, str(state_dir))
                why = f"{exc.filename}: {exc.strerror}" if named else exc.strerror
            raise StorageError(code, f"state database unusable: {why}", str(state_dir)) from exc
        self._checkpoints = PerProcess(lambda: Checkpointer(db))
        self._commits = 0
        self._lock = threading.Lock()
        self._group_open = False
        self._after_commit: list[Callable[[], None]] = []
        (last,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM operations").fetchone()
        self._seq = int(last)

    def _unusable(self, exc: sqlite3.Error) -> StorageError:
        """What a failed statement raises (an IntegrityError is re-raised as it is:
        each caller says which refusal it means)."""
        return StorageError(5, f"state database: {exc}", str(self.state_dir))

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise self._unusable(exc) from exc

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write: on the engine thread it joins the pass's group (see the module)."""
        with self._cursor() as db:
            loop = self._join_group()
            yield db
            self._end_write(loop)

    def _write(self, sql: str, params: Any) -> int:
        """One statement written as ``_writing`` writes (no context manager: a file
        of a mirror makes two of these, and the generator cost more than the lock);
        the rows it changed."""
        with self._lock:
            try:
                loop = self._join_group()
                count: int = self._db.execute(sql, params).rowcount
                self._end_write(loop)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise self._unusable(exc) from exc
        return count

    def _join_group(self) -> asyncio.AbstractEventLoop | None:
        """Under the lock: on the engine thread, open the pass's group if none is."""
        loop = engine_here()
        if loop is not None and not self._group_open:
            self._db.execute("BEGIN IMMEDIATE")
            self._group_open = True
            loop.call_soon(self.commit)
        return loop

    def _end_write(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Under the lock: off the engine thread, a write is durable on return."""
        if loop is None:
            if self._group_open:
                self._db.execute("COMMIT")  # the group's writes with it
                self._group_open = False
            self._committed()  # else autocommit: the statement was its own transaction

    def _committed(self) -> None:
        """Count a commit (under the lock); every _POKE_EVERY, poke the checkpointer."""
        self._commits += 1
        if self._commits % _POKE_EVERY == 0:
            self._checkpoints.get().poke()

    def commit(self) -> None:
        """End the open group, then run what waited for it to be durable."""
        failure: sqlite3.Error | None = None
        with self._lock:
            if self._group_open:
                self._group_open = False
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    failure = exc
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                self._committed()
            waiting, self._after_commit = self._after_commit, []
        for fn in waiting:
            fn()
        if failure is not None:  # the engine loop logs it; the statuses live on in memory
            raise self._unusable(failure)

    def when_durable(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every write made so far is committed: now, or after the
        open group (in order, behind whatever already waits)."""
        with self._lock:
            if self._group_open or self._after_commit:
                self._after_commit.append(fn)
                return
        fn()

    def next_seq(self) -> int:
        """Queue position of a new operation (creation order; another process's may tie)."""
        with self._lock:
            self._seq += 1
            return self._seq

    def insert(self, rec: OpRecord) -> None:
        """Persist a new operation; a live one on the same result file refuses it."""
        try:
            self._write(_INSERT, rec.to_row())
        except sqlite3.IntegrityError:
            raise ResultFileInUseError(
                f"{rec.result_file}: another operation is already downloading to this file"
            ) from None

    def update(self, guid: str, **fields: Any) -> None:
        """Write some columns of one operation (one statement: all or nothing)."""
        fields["updated"] = time.time()
        for key in ("recoverable", "headers"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        fields["guid"] = guid
        try:
            self._write(f"UPDATE operations SET {sets} WHERE guid = :guid", fields)
        except sqlite3.IntegrityError:
            raise ResultFileInUseError(
                "another operation has taken over this operation's result file"
            ) from None

    def delete(self, guid: str) -> None:
        """Forget a finished operation: nothing is left to resume or report."""
        self._write("DELETE FROM operations WHERE guid = ?", (guid,))

    def failed(self, before: float | None = None) -> list[OpRecord]:
        """Operations that ended in ERROR after the error was seen (``current`` leaves
        them out; their partial data stays); ``before``: only those failed earlier."""
        sql = "SELECT * FROM operations WHERE status = 7 AND acknowledged = 1"
        args: tuple[Any, ...] = ()
        if before is not None:
            sql += " AND updated < ?"
            args = (before,)
        with self._cursor() as db:
            rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [OpRecord.from_row(r) for r in rows]

    def ended(self) -> list[tuple[str, str, str, int, float]]:
        """(guid, uri, result_file, status, ended) of the finished operations."""
        with self._cursor() as db:
            rows = db.execute("SELECT * FROM ended ORDER BY ended").fetchall()
        return [tuple(r) for r in rows]

    def forget_ended(self, before: float) -> None:
        self._write("DELETE FROM ended WHERE ended < ?", (before,))

    def get(self, guid: str) -> OpRecord | None:
        with self._cursor() as db:
            row = db.execute("SELECT * FROM operations WHERE guid = ?", (guid,)).fetchone()
        return OpRecord.from_row(row) if row else None

    def current(self, group: str | None = None, *, ungrouped: bool = False) -> list[OpRecord]:
        """Operations not finished (COMPLETED, CANCELED, or an ERROR already reported):
        of ``group`` when given, else those of no group when ``ungrouped``, else all."""
        sql = f"SELECT * FROM operations WHERE NOT ({FINISHED_SQL})"
        args: tuple[Any, ...] = ()
        if group is not None:
            sql += " AND group_name = ?"
            args = (group,)
        elif ungrouped:
            sql += " AND group_name IS NULL"
        with self._cursor() as db:
            rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [OpRecord.from_row(r) for r in rows]

    def add_schema(self, script: str) -> None:
        """Create the tables of another module (``CREATE ... IF NOT EXISTS``, one
        statement at a time: ``executescript`` would commit an open group)."""
        with self._writing() as db:
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)

    def write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement over many rows, in one transaction (the pass's group on the
        engine thread): a bulk job's rows are written a batch at a time."""
        with self._writing() as db:
            db.executemany(sql, rows)

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._cursor() as db:
            return db.execute(sql, args).fetchall()

    # -- cancels asked across processes (engine/_ops/cross_process.py) --------------------
    def ask_cancel(self, guid: str) -> None:
        """Ask whichever process drives ``guid`` to cancel it (replaces an old ask)."""
        self._write(
            "INSERT OR REPLACE INTO requests (guid, answer, made) VALUES (?, NULL, ?)",
            (guid, time.time()),
        )

    def answer_of(self, guid: str) -> str | None:
        """'pending', 'taken', 'done' or 'refused: why'; None when nothing is asked."""
        with self._cursor() as db:
            row = db.execute(
                "SELECT COALESCE(answer, 'pending') FROM requests WHERE guid = ?", (guid,)
            ).fetchone()
        return None if row is None else str(row[0])

    def withdraw(self, guid: str) -> bool:
        """Take back an ask nobody has taken; False when its driver took it already."""
        return self._write("DELETE FROM requests WHERE guid = ? AND answer IS NULL", (guid,)) == 1

    def forget_request(self, guid: str) -> None:
        self._write("DELETE FROM requests WHERE guid = ?", (guid,))

    def asked(self) -> list[str]:
        """The operations some process asked to cancel, not yet taken."""
        with self._cursor() as db:
            rows = db.execute("SELECT guid FROM requests WHERE answer IS NULL").fetchall()
        return [str(r[0]) for r in rows]

    def take(self, guid: str) -> bool:
        """The driver's claim on an ask: True for the one process that gets it."""
        sql = "UPDATE requests SET answer = 'taken' WHERE guid = ? AND answer IS NULL"
        return self._write(sql, (guid,)) == 1

    def answer(self, guid: str, answer: str) -> None:
        self._write("UPDATE requests SET answer = ? WHERE guid = ?", (answer, guid))

    def group_behavior(self, name: str, behavior: int | None) -> int:
        """The stored behaviour of group ``name``, creating it with ``behavior`` if new."""
        with self._writing() as db:
            row = db.execute("SELECT behavior FROM groups WHERE name = ?", (name,)).fetchone()
            if row is not None and behavior is None:
                return int(row[0])
            value = behavior if behavior is not None else (int(row[0]) if row else 0)
            db.execute(
                "INSERT INTO groups (name, behavior) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET behavior = excluded.behavior",
                (name, value),
            )
            return value


@atexit.register
def _commit_open_groups() -> None:
    """The engine thread is a daemon: what its last pass wrote is committed at exit."""
    for store in list(Store._open.values()):
        store.commit()
