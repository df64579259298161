"""Durability levels: a download resumed after another boot trusts no block unchecked."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer, Nginx

from engine import BackgroundDownloader, InvalidRequestError, TransferConfig
from engine._disk.core import RangeFile, control_path, part_path

CHILD = str(Path(__file__).with_name("attach_child.py"))
BLOCK = 1 << 16  # attach_child.py's
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _child(state: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with (state.parent / "child.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, CHILD, str(state), *args],
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
        )


def _complete_blocks(result: Path, size: int) -> list[int]:
    """Offsets of the blocks the control file marks complete."""
    with RangeFile(result, size, BLOCK, create=False, direct=False) as rf:
        return [off for start, n in rf.ranges() for off in range(start, start + n, BLOCK)]


def _killed_with_blocks(
    tmp_path: Path, server: FaultServer, durability: str
) -> tuple[Path, Path, list[int]]:
    """A download killed (SIGKILL) in boot "boot-one" once some blocks are complete."""
    state, result = tmp_path / "state", tmp_path / "out.bin"
    env = {"BGT_TEST_DURABILITY": durability, "BGTRANSFER_BOOT_ID": "boot-one"}
    proc = _child(state, env, "create", server.url, str(result))
    try:
        wait_for(lambda: control_path(result).exists() and server.bytes_sent >= 1 << 20)
        wait_for(lambda: len(_complete_blocks(result, len(server.body))) >= 4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not result.exists(), "finished before the kill: nothing to check"
    return state, result, _complete_blocks(result, len(server.body))


def _resume_in(state: Path, durability: str, boot: str) -> None:
    env = {"BGT_TEST_DURABILITY": durability, "BGTRANSFER_BOOT_ID": boot}
    proc = _child(state, env, "attach")
    assert proc.wait(120) == 0, (state.parent / "child.log").read_text()


@pytest.fixture
def slow_server() -> Iterator[FaultServer]:
    server = FaultServer(random.Random(5).randbytes(8 << 20))
    server.rate = 1 << 20  # per connection: the kill lands mid-download
    yield server
    server.close()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_corrupt_block_after_a_new_boot_is_fetched_again(
    tmp_path: Path, slow_server: FaultServer, durability: str
) -> None:
    """Killed, a complete block damaged on disk, resumed in another boot: the block's
    hash fails, it is fetched again, and the result is byte-exact."""
    state, result, complete = _killed_with_blocks(tmp_path, slow_server, durability)
    victim = complete[len(complete) // 2]
    with part_path(result).open("r+b") as fh:
        fh.seek(victim + 100)
        fh.write(bytes([slow_server.body[victim + 100] ^ 0xFF]))
    slow_server.rate = 0
    _resume_in(state, durability, "boot-two")
    assert result.read_bytes() == slow_server.body


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_hole_under_a_set_bit_after_a_new_boot_is_fetched_again(
    tmp_path: Path, slow_server: FaultServer, durability: str
) -> None:
    """A complete block whose data never reached the disk (a hole punched under its
    bit), resumed in another boot: detected and fetched again, byte-exact."""
    state, result, complete = _killed_with_blocks(tmp_path, slow_server, durability)
    victim = complete[0]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(part_path(result), os.O_RDWR)
    try:
        if libc.fallocate(fd, _PUNCH_HOLE, victim, BLOCK) != 0:
            pytest.skip(f"no hole punching here: {os.strerror(ctypes.get_errno())}")
        assert os.pread(fd, BLOCK, victim) == bytes(BLOCK)
    finally:
        os.close(fd)
    slow_server.rate = 0
    _resume_in(state, durability, "boot-two")
    assert result.read_bytes() == slow_server.body


def test_check_boot_rehashes_only_after_another_boot(tmp_path: Path) -> None:
    """The same boot trusts the bitmap (no re-read of the file); another boot, or a
    control file that recorded none, re-hashes every complete block and clears the
    damaged ones, once."""
    result = tmp_path / "b.bin"
    data = os.urandom(8 * BLOCK)
    with RangeFile(result, len(data), BLOCK) as rf:
        assert rf.check_boot("one") == 0  # recorded none: checked (nothing complete yet)
        rf.write(0, data)
        rf.drain()
    with part_path(result).open("r+b") as fh:
        fh.seek(3 * BLOCK)
        fh.write(b"\0")
    with RangeFile(result, len(data), BLOCK, create=False) as rf:
        assert rf.check_boot("one") == 0
        assert rf.bytes_complete == len(data)
        assert rf.check_boot("two") == 1
        assert rf.ranges() == [(0, 3 * BLOCK), (4 * BLOCK, 4 * BLOCK)]
        assert rf.check_boot("two") == 0


def test_durability_is_checked_and_inherited(tmp_path: Path) -> None:
    """A durability other than normal or full is refused in the user's words; the
    downloader's argument overrides its config's."""
    with pytest.raises(InvalidRequestError, match="durability must be one of normal, full"):
        TransferConfig(durability="fast")  # type: ignore[arg-type]
    d = BackgroundDownloader(state_dir=tmp_path / "s", durability="full")
    assert d.durability == "full"
    assert BackgroundDownloader(state_dir=tmp_path / "s").durability == "normal"
    with pytest.raises(InvalidRequestError):
        BackgroundDownloader(state_dir=tmp_path / "s", durability="none")  # type: ignore[arg-type]


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_get_takes_either_durability(nginx: Nginx, tmp_path: Path, durability: str) -> None:
    """get --durability normal|full: a large (ranged) and a small (held) file, byte-exact."""
    for name in ("big.bin", "small.bin"):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "engine", "get", nginx.url(name), "-o", name),
                *("--durability", durability, "--state-dir", str(tmp_path / "s")),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).read_bytes() == (nginx.www / name).read_bytes()


def test_an_unknown_durability_is_a_usage_error(tmp_path: Path) -> None:
    """get --durability fast: exit 2, the choices named, nothing made."""
    done = subprocess.run(
        [sys.executable, "-m", "engine", "get", "http://127.0.0.1:9/x", "--durability", "fast"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "'normal', 'full'" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["big.bin", "small.bin"])
def test_normal_waits_for_no_disk_and_full_does(nginx: Nginx, tmp_path: Path, name: str) -> None:
    """normal makes no fsync or fdatasync of a result file or its folder, ranged or
    small; full fsyncs the file and its folder before it completes.  (The state
    database's own, SQLite's, are left out.)"""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    counts = {}
    for level in ("normal", "full"):
        log = tmp_path / f"{level}.strace"
        done = subprocess.run(
            [
                *(strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(log)),
                *(sys.executable, "-m", "engine", "get", nginx.url(name), "-o", level),
                *("--durability", level, "--state-dir", str(tmp_path / "s")),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / level).read_bytes() == (nginx.www / name).read_bytes()
        state = f"<{tmp_path / 's'}"  # strace -y: each descriptor with its path
        calls = [c for c in log.read_text().splitlines() if "sync(" in c and state not in c]
        counts[level] = len([c for c in calls if c.endswith("= 0")])
    assert counts["normal"] == 0
    assert counts["full"] >= 2  # the file, then its directory
