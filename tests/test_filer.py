"""The C filer (csrc/filer.c through engine._files): creates, finishes, and what a
cancelled or failed job leaves behind.  Real files in a temp dir, real threads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from engine._native import lib
from polling import wait_for

from engine._core import control_path, part_path
from engine._files import filer
from engine.errors import StorageError


def test_create_then_finish_renames_durably(tmp_path: Path) -> None:
    result = tmp_path / "a.bin"

    async def go() -> None:
        fd = await filer().create_partial(result)
        assert fd is not None
        assert fd >= 0
        assert part_path(result).stat().st_size == 0
        os.write(fd, b"hello")
        await filer().finish(fd, result)  # the filer closes fd

    asyncio.run(go())
    assert result.read_bytes() == b"hello"
    assert not part_path(result).exists()


def test_a_control_file_means_resume_and_nothing_is_touched(tmp_path: Path) -> None:
    result = tmp_path / "r.bin"
    part_path(result).write_bytes(b"earlier bytes")
    control_path(result).write_bytes(b"x")
    assert asyncio.run(filer().create_partial(result)) is None
    assert part_path(result).read_bytes() == b"earlier bytes"


def test_a_stale_partial_or_planted_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    result = tmp_path / "s.bin"
    part_path(result).symlink_to(victim)

    async def go() -> None:
        fd = await filer().create_partial(result)
        assert fd is not None
        os.write(fd, b"new")
        await filer().finish(fd, result)

    asyncio.run(go())
    assert victim.read_bytes() == b"keep me"
    assert result.read_bytes() == b"new"
    assert not result.is_symlink()


def test_failures_are_storage_errors(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(StorageError) as missing:
            await filer().create_partial(tmp_path / "no-such-dir" / "f.bin")
        assert missing.value.errno == 2
        fd = await filer().create_partial(tmp_path / "f.bin")
        assert fd is not None
        (tmp_path / "gone").mkdir()
        (tmp_path / "gone" / "f.bin").mkdir()  # renaming a file onto a directory fails
        part_path(tmp_path / "f.bin").rename(part_path(tmp_path / "gone" / "f.bin"))
        with pytest.raises(StorageError):
            await filer().finish(fd, tmp_path / "gone" / "f.bin")

    asyncio.run(go())


def test_a_cancelled_create_leaves_no_partial_file(tmp_path: Path) -> None:
    results = [tmp_path / f"c{i}.bin" for i in range(50)]

    async def go() -> None:
        tasks = [asyncio.ensure_future(filer().create_partial(r)) for r in results]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The creates finish in the filer's threads meanwhile; each is undone when the
        # loop takes it back.  (An empty folder proves nothing: under load the first
        # create may not have run yet.)
        waiting = filer()._channels[asyncio.get_running_loop()].waiting
        for _ in range(2000):
            if not waiting:
                return
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert list(tmp_path.iterdir()) == []


def test_a_closed_channels_jobs_are_undone(tmp_path: Path) -> None:
    """The owner of a channel went away with jobs in flight: as they finish, the filer
    closes and removes the partial files they made (the C side, directly)."""
    f = lib.fl_new(1)
    ch = lib.fl_channel_new()
    results = [tmp_path / f"o{i}.bin" for i in range(50)]
    for i, r in enumerate(results):
        rc = lib.fl_submit(
            f, ch, lib.FL_PREPARE, i, -1, os.fsencode(part_path(r)), os.fsencode(control_path(r))
        )
        assert rc == 0
    lib.fl_channel_close(f, ch)
    wait_for(lambda: not any(part_path(r).exists() for r in results))
