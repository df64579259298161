"""A mirror list cut into shards whose ids follow from the list alone.

A shard is the unit a worker runs and the unit whose end is recorded in the
destination, so its id must be the same in every run of the same list, whatever
cluster runs it and however many workers it has: the id is the shard's place in the
list and a hash of its lines, and the shard's size depends only on the list's length.
A list edited in the middle gives new ids from there on (those shards run again,
and skip the files already there).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from urllib.parse import urlsplit

from engine.cli.names import Entry

MAX_SHARD = 500
"""Files a shard at most: a shard run again after a worker died refetches none of
its complete files, but it lists and checks them all."""
SHARDS_WANTED = 64
"""Shards a list is cut into when it is long enough: enough to spread over the
workers and to let work stealing even them out, few enough to cost little."""


@dataclasses.dataclass(frozen=True)
class Shard:
    id: str
    items: tuple[Entry, ...]

    @property
    def hosts(self) -> list[str]:
        """The hosts its URLs name, every source of a file (``host:port``, lowercase),
        sorted: leases on their semaphores are taken in this order, so two shards never
        wait on each other."""
        return sorted(
            {
                urlsplit(url).netloc.rpartition("@")[2].lower()
                for item in self.items
                for url in (item.url, *item.mirrors)
            }
        )


def shard_size(count: int) -> int:
    """Files a shard for a list of ``count`` files (a function of the count alone)."""
    return max(1, min(MAX_SHARD, -(-count // SHARDS_WANTED)))


def cut(items: Sequence[Entry], size: int | None = None) -> list[Shard]:
    """``items`` in shards of ``size`` files (``shard_size`` when None), in list order."""
    size = size or shard_size(len(items))
    if size < 1:
        raise ValueError(f"a shard holds at least one file, not {size}")
    shards = []
    for index, start in enumerate(range(0, len(items), size)):
        part = tuple(items[start : start + size])
        digest = hashlib.sha256()
        for item in part:
            urls = "\t".join((item.url, *item.mirrors))
            digest.update(f"{urls}\0{item.name}\0{item.checksum or ''}\n".encode())
        shards.append(Shard(f"{index:06d}-{digest.hexdigest()[:16]}", part))
    return shards
