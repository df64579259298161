"""Storage failures and untrusted control files: typed errors, nothing claimed that is not there."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import tmpfs

from engine._disk.core import RangeFile, control_path, part_path
from engine.errors import ControlFileError, StorageError

BLOCK = 4096


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (the suite runs as root, as CI does)."""
    with tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


def test_disk_full_at_preallocation_is_enospc_and_leaves_nothing(small_tmpfs: Path) -> None:
    """A file larger than the free space fails at open with ENOSPC; no partial files remain."""
    keep = RangeFile(small_tmpfs / "keep", 256 * 1024, BLOCK)
    keep.write(0, b"k" * 8 * BLOCK)
    keep.close()
    result = small_tmpfs / "big.bin"
    with pytest.raises(StorageError) as info:
        RangeFile(result, 2 * 1024 * 1024, BLOCK)
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert not part_path(result).exists()
    assert not control_path(result).exists()
    with RangeFile(small_tmpfs / "keep", 256 * 1024, BLOCK, create=False) as again:
        assert again.ranges() == [(0, 8 * BLOCK)]


def test_write_past_file_size_limit_is_typed_and_control_stays_valid(tmp_path: Path) -> None:
    """A pwrite refused by RLIMIT_FSIZE raises StorageError(EFBIG); the bitmap stays valid."""
    result = tmp_path / "f.bin"
    size = 64 * BLOCK
    data = os.urandom(size)
    rf = RangeFile(result, size, BLOCK, staged=False)
    rf.write(0, data[: 8 * BLOCK])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * BLOCK, hard))
    try:
        with pytest.raises(StorageError) as info:
            rf.write(40 * BLOCK, data[40 * BLOCK : 48 * BLOCK])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    assert rf.ranges() == [(0, 8 * BLOCK)]
    rf.close()
    with RangeFile(result, size, BLOCK, create=False) as again:
        assert again.ranges() == [(0, 8 * BLOCK)]
        assert again.verify() == 0
        again.write(8 * BLOCK, data[8 * BLOCK :])
        again.finish()
    assert result.read_bytes() == data


def _make(tmp_path: Path, name: str = "f.bin") -> Path:
    result = tmp_path / name
    with RangeFile(result, 16 * BLOCK, BLOCK, etag='"v1"') as rf:
        rf.write(0, os.urandom(4 * BLOCK))
    return result


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: b"GIF89a" + raw[6:], "not a bgtransfer control file"),
        (lambda raw: raw[:8] + b"\x07" + raw[9:], "another format version"),
        (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "corrupt header"),
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw[:100], "truncated"),
        (lambda raw: raw[:4], "not a bgtransfer control file"),
        (lambda raw: b"", "not a bgtransfer control file"),
    ],
    ids=["foreign", "version", "header-bit", "short-tail", "short-header", "tiny", "empty"],
)
def test_damaged_control_file_is_refused_untouched(
    tmp_path: Path, damage: object, message: str
) -> None:
    """A foreign, corrupt or truncated control file raises ControlFileError, left as it was."""
    result = _make(tmp_path)
    ctl = control_path(result)
    bad = damage(ctl.read_bytes())  # type: ignore[operator]
    ctl.write_bytes(bad)
    with pytest.raises(ControlFileError, match=message):
        RangeFile(result, 16 * BLOCK, BLOCK, create=False)
    with pytest.raises(ControlFileError):
        RangeFile(result, 16 * BLOCK, BLOCK, create=True)
    assert ctl.read_bytes() == bad


def test_control_file_of_another_size_or_without_data_is_refused(tmp_path: Path) -> None:
    """A control file for another size/block size, or whose data file vanished, is refused."""
    result = _make(tmp_path)
    with pytest.raises(ControlFileError, match="another size"):
        RangeFile(result, 17 * BLOCK, BLOCK, create=False)
    with pytest.raises(ControlFileError, match="another size"):
        RangeFile(result, 16 * BLOCK, 2 * BLOCK, create=False)
    part_path(result).unlink()
    with pytest.raises(ControlFileError, match="lost its data"):
        RangeFile(result, 16 * BLOCK, BLOCK, create=False)
