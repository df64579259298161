"""The C filer (csrc/filer.c through engine._disk.files): finishing a small result file,
with or without a partial file made beforehand, and what a failed or orphaned job
leaves behind.  Real files in a temp dir, real threads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from engine._native import ffi, lib
from polling import wait_for

from engine._disk.core import part_path
from engine._disk.files import filer
from engine.errors import StorageError


def test_a_held_body_becomes_the_file_without_a_partial_file_first(tmp_path: Path) -> None:
    result = tmp_path / "a.bin"
    body = os.urandom(70_000)  # whole pages and a ragged end
    asyncio.run(filer().finish(-1, result, body))
    assert result.read_bytes() == body
    assert not part_path(result).exists()


def test_an_existing_partial_file_gets_the_held_end(tmp_path: Path) -> None:
    """A body that spilled: its start is in the partial file, the rest in memory."""
    result = tmp_path / "b.bin"
    fd = os.open(part_path(result), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 5000)

    async def go() -> None:
        await filer().finish(fd, result, b"y" * 9000, 5000)  # the filer closes fd

    asyncio.run(go())
    assert result.read_bytes() == b"x" * 5000 + b"y" * 9000


def test_an_empty_body_makes_an_empty_file(tmp_path: Path) -> None:
    result = tmp_path / "empty.bin"
    asyncio.run(filer().finish(-1, result))
    assert result.read_bytes() == b""


def test_a_stale_partial_or_planted_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    result = tmp_path / "s.bin"
    part_path(result).symlink_to(victim)
    asyncio.run(filer().finish(-1, result, b"new"))
    assert victim.read_bytes() == b"keep me"
    assert result.read_bytes() == b"new"
    assert not result.is_symlink()


def test_failures_are_storage_errors_and_leave_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(StorageError) as missing:
            await filer().finish(-1, tmp_path / "no-such-dir" / "f.bin", b"data")
        assert missing.value.errno == 2
        (tmp_path / "f.bin").mkdir()  # renaming a file onto a directory fails
        with pytest.raises(StorageError):
            await filer().finish(-1, tmp_path / "f.bin", b"data")

    asyncio.run(go())
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # the partial file it made went


def test_bad_arguments_are_refused_before_anything_runs(tmp_path: Path) -> None:
    f = lib.fl_new(1, 64 << 10)
    ch = lib.fl_channel_new()
    name = os.fsencode(tmp_path / "x.bin")
    # without a descriptor the body is the whole file: it cannot start further on
    assert lib.fl_finish(f, ch, 1, -1, name + b".part", name, ffi.NULL, ffi.NULL, 0, 10, 0) == -22
    assert lib.fl_finish(f, ch, 1, -1, b"/" + b"a" * 5000, name, ffi.NULL, ffi.NULL, 0, 0, 0) == -36
    lib.fl_channel_close(f, ch)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_channels_jobs_still_finish_whole(tmp_path: Path) -> None:
    """The owner of a channel went away with jobs in flight: they finish (a file they
    make is complete), and are freed; nothing is left half done."""
    f = lib.fl_new(2, 64 << 10)
    ch = lib.fl_channel_new()
    results = [tmp_path / f"o{i}.bin" for i in range(50)]
    for i, r in enumerate(results):
        body = os.urandom(100 + i)
        rc = lib.fl_finish(
            f, ch, i, -1, os.fsencode(part_path(r)), os.fsencode(r), ffi.NULL, body, len(body), 0, 0
        )
        assert rc == 0
    lib.fl_channel_close(f, ch)
    wait_for(lambda: all(r.exists() for r in results))
    assert [r.stat().st_size for r in results] == [100 + i for i in range(50)]
    assert not any(part_path(r).exists() for r in results)
