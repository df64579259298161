"""Disk full: ERROR with ENOSPC (or PAUSED_SYSTEM_POLICY under the reserve), then resumed."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounts import tmpfs
from polling import wait_for
from servers import FaultServer

from engine import BackgroundDownloader, BackgroundTransferStatus, StorageError

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
MIB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (the suite runs as root, as CI does)."""
    with tmpfs(tmp_path / "disk", "16m") as mnt:
        yield mnt


def test_disk_full_is_error_then_resume_completes(disk: Path, make_downloader: Make) -> None:
    """No space: ERROR (StorageError ENOSPC, a clear message); space freed: resume() ends it.
    (A file with ranges declares its size first: it waits for room instead, see
    test_preallocation.)"""
    size = 3 * MIB
    body = bytes(range(256)) * (size // 256)
    server = FaultServer(body)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (16 * MIB - size // 2))
    try:
        d = make_downloader()
        d.free_space_reserve = 0
        op = d.create_download(server.url, disk / "f.bin")
        with pytest.raises(StorageError) as info:
            op.start().wait(30)
        assert info.value.errno == errno.ENOSPC
        assert "No space left" in str(info.value)
        assert op.status is S.ERROR
        assert not (disk / "f.bin").exists()
        ballast.unlink()
        op.resume()
        op.wait(30)
        assert (disk / "f.bin").read_bytes() == body
    finally:
        server.close()


def test_low_space_pauses_under_the_reserve_and_resumes_by_itself(
    disk: Path, make_downloader: Make
) -> None:
    """Free space below the reserve: PAUSED_SYSTEM_POLICY; freed: it goes on by itself."""
    body = bytes(range(256)) * (8 * MIB // 256)
    server = FaultServer(body)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 13 * MIB)  # 3 MiB free; once freed, 16 = 8 + 4 kept + 4
    try:
        d = make_downloader()
        d.free_space_reserve = 4 * MIB
        op = d.create_download(server.url, disk / "f.bin")
        op.start()
        wait_for(lambda: op.status is S.PAUSED_SYSTEM_POLICY)
        ballast.unlink()
        op.wait(30)
        assert (disk / "f.bin").read_bytes() == body
    finally:
        server.close()
