"""How the C core stages, writes and syncs: numbers the engine chooses, the core obeys.

The core (``csrc/``) holds no tunable of its own: every stage size, memory budget and
thread count reaches it as an argument, from a ``TransferConfig`` through
``Tuning.of``.  The stage counts are not user settings: a run per connection of the
default eight through the page cache, and three per connection with the writer
threads (one filling, the rest in flight).  The writer threads and the filer are the
process's: they keep the most any download asked for.
"""

from __future__ import annotations

import dataclasses
import functools

from engine.config import TransferConfig

STAGES = 8
"""Runs a file gathers at once when its caller's thread writes them."""
THREADED_STAGES = 24
"""Runs a file gathers at once when the writer threads write them."""


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The C core's arguments for one download (see ``rf_tuning`` in csrc/rangefile.h)."""

    stage_size: int
    max_stage_size: int
    stage_memory: int
    writer_threads: int
    sync_threads: int
    stages: int = STAGES
    threaded_stages: int = THREADED_STAGES

    @staticmethod
    def of(config: TransferConfig) -> Tuning:
        """The tuning ``config`` asks for.  A mirror asks once a file, with one config:
        the last answer is kept by identity (hashing a config hashes every field)."""
        last = _last
        if last[0] is config:
            return last[1]
        return _remember(config)


def _of(config: TransferConfig) -> Tuning:
    return Tuning(
        stage_size=config.stage_size,
        max_stage_size=config.max_stage_size,
        stage_memory=config.stage_memory,
        writer_threads=config.writer_threads,
        sync_threads=config.sync_threads,
    )


def _remember(config: TransferConfig) -> Tuning:
    global _last
    _last = (config, _by_value(config))
    return _last[1]


_by_value = functools.lru_cache(maxsize=32)(_of)
_DEFAULT_CONFIG = TransferConfig()
_last: tuple[TransferConfig, Tuning] = (_DEFAULT_CONFIG, _of(_DEFAULT_CONFIG))


DEFAULT_TUNING = Tuning.of(_DEFAULT_CONFIG)
"""What a default TransferConfig asks for: readers of a kept file, tests, the CLI."""
