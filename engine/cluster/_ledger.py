"""What is done lives in the destination, where every worker and every later run sees it.

Layout under the destination ``DEST`` (a folder every worker sees)::

    NAME                          a complete file, put there only by rename
    .bgtransfer/shards/ID.json    a shard that ended: its counts and its failures
    .bgtransfer/staging/ID/       where runs of shard ID download (partial, control files)
    .bgtransfer/staging/ID.lock   held (flock) by the run that downloads into staging/ID
    .bgtransfer/staging/ID.RUN/   a run's own folder while another run holds the lock

Two runs of one shard can overlap: a worker the scheduler thought dead may still be
running it.  They must never write the same partial file, since the engine renames
a partial file onto its result by name, and another writer's incomplete file could
be the one renamed.  So the run that gets the lock continues what earlier runs left
in ``staging/ID`` (their control files), and a run that finds it taken downloads into
a folder of its own, removed when it ends.  Both end the same way: every complete
file is renamed from the staging folder onto ``DEST/NAME``, which replaces a file of
the same (verified) content at worst, and the shard's record is written by temporary
file and rename.  So every commit can happen twice: a zombie only costs bandwidth.
The lock only saves refetching partial data; correctness never depends on it (an
NFS lock outlives a dead client for a lease period: meanwhile a run uses a folder
of its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

_held: set[str] = set()
"""Staging folders a run of this process holds (flock over NFS is a per-process lock)."""
_held_lock = threading.Lock()


class Ledger:
    """The destination's record of shards, and its staging folders."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.root = os.path.join(dest, ".bgtransfer")
        self.shards = os.path.join(self.root, "shards")
        self.staging = os.path.join(self.root, "staging")

    def record_path(self, shard_id: str) -> str:
        return os.path.join(self.shards, f"{shard_id}.json")

    def done(self, shard_id: str) -> dict[str, Any] | None:
        """The record of a shard that ended, or None (none, or unreadable: run it)."""
        try:
            with open(self.record_path(shard_id), encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def write(self, shard_id: str, record: dict[str, Any]) -> None:
        """The shard's record, whole or not at all: a temporary file, fsync, rename,
        fsync of the folder (the last of two overlapping runs wins; both are true)."""
        os.makedirs(self.shards, exist_ok=True)
        final = self.record_path(shard_id)
        temp = f"{final}.{uuid.uuid4().hex}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        fsync_dir(self.shards)

    @contextlib.contextmanager
    def claim(self, shard_id: str) -> Iterator[str]:
        """The staging folder of a run of ``shard_id``: the shard's own when no other
        run holds it (what earlier runs left there is continued), else a new one,
        removed when the run ends."""
        os.makedirs(self.staging, exist_ok=True)
        shared = os.path.join(self.staging, shard_id)
        lock = _try_lock(f"{shared}.lock", shared)
        if lock is not None:
            try:
                os.makedirs(shared, exist_ok=True)
                yield shared
                with contextlib.suppress(OSError):  # only when nothing partial is left
                    os.rmdir(shared)
            finally:
                _unlock(lock, shared)
            return
        own = os.path.join(self.staging, f"{shard_id}.{uuid.uuid4().hex[:12]}")
        os.makedirs(own)
        try:
            yield own
        finally:
            shutil.rmtree(own, ignore_errors=True)

    def commit(self, staging: str, names: Iterable[str]) -> int:
        """Rename every complete file of ``names`` from ``staging`` onto the
        destination (atomic; a file another run put there first is replaced by the
        same content), then make the renames durable; how many were moved."""
        moved = 0
        for name in names:
            try:
                os.replace(os.path.join(staging, name), os.path.join(self.dest, name))
            except FileNotFoundError:  # not complete here (failed, or moved already)
                continue
            moved += 1
        if moved:
            fsync_dir(self.dest)
            fsync_dir(staging)
        return moved


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(path: str, key: str) -> int | None:
    """An open, flock'ed descriptor of ``path``; None when another run holds it."""
    with _held_lock:
        if key in _held:
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        _held.add(key)
        return fd


def _unlock(fd: int, key: str) -> None:
    with _held_lock:
        _held.discard(key)
        os.close(fd)  # closing the last descriptor releases the flock
