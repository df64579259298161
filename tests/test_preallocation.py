"""A declared size never takes the free-space reserve: larger than the file system
fails at once (ENOSPC), larger than its free space waits and says how much more."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounts import tmpfs
from polling import wait_for
from servers import FaultServer

from engine import BackgroundDownloader, BackgroundTransferStatus, StorageError
from engine._disk.core import part_path

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
MIB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "16m") as mnt:
        yield mnt


def test_a_size_past_the_file_systems_capacity_fails_at_once(
    disk: Path, make_downloader: Make
) -> None:
    """Declared 24 MiB on a 16 MiB file system: ERROR with ENOSPC naming both sizes,
    after the one first request, no partial file."""
    server = FaultServer(bytes(24 * MIB))
    try:
        d = make_downloader()
        d.free_space_reserve = MIB
        op = d.create_download(server.url, disk / "f.bin")
        with pytest.raises(StorageError, match="whole file system holds") as info:
            op.start().wait(30)
        assert info.value.errno == errno.ENOSPC
        assert op.status is S.ERROR
        assert server.requests == 1
        assert not part_path(disk / "f.bin").exists()
    finally:
        server.close()


def test_a_size_past_the_free_space_waits_without_taking_it(
    disk: Path, make_downloader: Make
) -> None:
    """8 MiB with 10 MiB free and 4 MiB kept: PAUSED_SYSTEM_POLICY before any of it is
    allocated (space_needed tells the size); room made: it completes by itself."""
    body = bytes(range(256)) * (8 * MIB // 256)
    server = FaultServer(body)
    ballast = disk / "ballast"
    ballast.write_bytes(bytes(6 * MIB))
    try:
        d = make_downloader()
        d.free_space_reserve = 4 * MIB
        op = d.create_download(server.url, disk / "f.bin")
        op.start()
        wait_for(lambda: op.status is S.PAUSED_SYSTEM_POLICY)
        assert op.space_needed == len(body)
        assert not part_path(disk / "f.bin").exists()
        ballast.unlink()
        op.wait(30)
        assert (disk / "f.bin").read_bytes() == body
        assert op.space_needed == 0
    finally:
        server.close()


def test_the_command_says_how_much_more_space_it_needs(tmp_path: Path) -> None:
    """get into a folder short of room for the declared size says how much more it
    needs, and completes once there is room."""
    body = bytes(range(256)) * (16 * MIB // 256)
    server = FaultServer(body)
    with tmpfs(tmp_path / "disk", "96m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(bytes(20 * MIB))  # 76 MiB free: 16 + 64 kept do not fit
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "get",
                server.url,
                "-o",
                str(disk / "f.bin"),
                "-q",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "a file of 16 MiB needs 4 MiB more" in line, line
            ballast.unlink()
            assert proc.wait(60) == 0, proc.stderr.read()
            assert (disk / "f.bin").read_bytes() == body
        finally:
            proc.kill()
            proc.communicate()
            server.close()
