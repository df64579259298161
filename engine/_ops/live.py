"""The operations this process holds: one object per operation while anyone holds it."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from engine._ops.interfaces import EngineOperation
from engine._ops.settings import Settings

live_lock = threading.RLock()
live: weakref.WeakValueDictionary[tuple[Path, str], EngineOperation] = weakref.WeakValueDictionary()
"""Operations this process holds, by (state dir, guid): one object per operation while
anyone holds it (a running one is held by its task), not every one a long-lived process
ever made."""


def reorder_group(settings: Settings, group: str, guid: str) -> None:
    """Queue positions: ``guid`` and those after it first, the rest after (seq renumbered)."""
    members = settings.store.current(group)
    index = next((i for i, rec in enumerate(members) if rec.guid == guid), None)
    if index is None:
        return
    order = members[index:] + members[:index]
    seqs = sorted(rec.seq for rec in members)
    for rec, seq in zip(order, seqs, strict=True):
        settings.store.update(rec.guid, seq=seq)
        held = live.get((settings.store.state_dir, rec.guid))
        if held is not None:
            held.record.seq = seq
