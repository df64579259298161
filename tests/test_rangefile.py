"""The C range-file core: writes in any order give exactly the right ranges and bytes."""

from __future__ import annotations

import itertools
import os
import random
import stat
import warnings
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._disk.core import RangeFile, control_path, part_path, peek
from engine.errors import InvalidRequestError, InvalidStateError, StorageError

BLOCK = 4096


def pieces_of(size: int, cuts: list[int]) -> list[tuple[int, int]]:
    """Split [0, size) at the given cut points into (offset, length) pieces."""
    points = sorted({0, size, *(c for c in cuts if 0 < c < size)})
    return [(a, b - a) for a, b in itertools.pairwise(points)]


def expected_ranges(size: int, written: list[tuple[int, int]], block: int) -> list[tuple[int, int]]:
    """Block-granular ranges fully covered by ``written``, merged: the model the core must match."""
    covered = bytearray(size)
    for off, n in written:
        covered[off : off + n] = b"\1" * n
    out: list[tuple[int, int]] = []
    for start in range(0, size, block):
        end = min(start + block, size)
        if all(covered[start:end]):
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((start, end - start))
    return out


@st.composite
def write_plans(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], int]:
    """A file size, its pieces (>= 300 bytes: at most 15 a block), and how many to write."""
    size = draw(st.integers(0, 40 * BLOCK))
    cuts: list[int] = []
    pos = 0
    while True:
        pos += draw(st.integers(300, 3 * BLOCK))
        if pos >= size:
            break
        cuts.append(pos)
    pieces = pieces_of(size, cuts)
    order = draw(st.permutations(pieces)) if pieces else []
    return size, list(order), draw(st.integers(0, len(order)))


MODES = {"direct": (True, True), "buffered": (True, False), "unstaged": (False, False)}
"""(staged, direct) for each way the core can write."""


@pytest.mark.parametrize("mode", list(MODES))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=write_plans(), seed=st.integers(0, 2**32 - 1))
def test_random_orders_give_right_ranges_and_bytes(
    tmp_path: Path, mode: str, plan: tuple[int, list[tuple[int, int]], int], seed: int
) -> None:
    """Any write order and piece size yields the model's ranges, then a byte-exact file."""
    size, order, n_first = plan
    data = random.Random(seed).randbytes(size)
    result = tmp_path / f"r{seed}.bin"
    staged, direct = MODES[mode]
    rf = RangeFile(result, size, BLOCK, staged=staged, direct=direct)
    for off, n in order[:n_first]:
        rf.write(off, memoryview(data)[off : off + n])
    want = expected_ranges(size, order[:n_first], BLOCK)
    assert rf.ranges() == want
    assert rf.bytes_complete == sum(n for _, n in want)
    for off, n in want:
        assert rf.read(off, n) == data[off : off + n]
    for off, n in order[n_first:]:
        rf.write(off, data[off : off + n])
    assert rf.ranges() == ([(0, size)] if size else [])
    assert rf.next_missing(0) is None
    assert rf.finish() == result
    assert result.read_bytes() == data
    assert not part_path(result).exists()
    assert not control_path(result).exists()


def test_reopen_keeps_ranges_validators_and_hashes(tmp_path: Path) -> None:
    """Closing and reopening a download restores its bitmap and validators."""
    result = tmp_path / "f.bin"
    data = os.urandom(10 * BLOCK + 123)
    with RangeFile(result, len(data), BLOCK, etag='"abc"', last_modified="Tue, 1 Jan 2030") as rf:
        assert rf.created
        rf.write(BLOCK, data[BLOCK : 4 * BLOCK])
        rf.write(9 * BLOCK, data[9 * BLOCK :])
    with RangeFile(result, len(data), BLOCK, create=False) as rf:
        assert not rf.created
        assert rf.etag == '"abc"'
        assert rf.last_modified == "Tue, 1 Jan 2030"
        assert rf.ranges() == [(BLOCK, 3 * BLOCK), (9 * BLOCK, BLOCK + 123)]
        assert rf.bytes_complete == 4 * BLOCK + 123
        assert rf.verify() == 0
        assert rf.next_missing(0) == (0, BLOCK)
        assert rf.next_missing(BLOCK) == (4 * BLOCK, 5 * BLOCK)
        assert rf.range_complete(BLOCK + 10, 2 * BLOCK)
        assert not rf.range_complete(0, 2 * BLOCK)


def test_stored_hash_is_xxh3_of_each_block(tmp_path: Path) -> None:
    """verify() finds and clears a complete block whose bytes changed on disk."""
    result = tmp_path / "f.bin"
    data = os.urandom(8 * BLOCK)
    with RangeFile(result, len(data), BLOCK) as rf:
        rf.write(0, data)
    with part_path(result).open("r+b") as fh:
        fh.seek(3 * BLOCK + 17)
        fh.write(b"\xff" if data[3 * BLOCK + 17] != 0xFF else b"\0")
    with RangeFile(result, len(data), BLOCK, create=False) as rf:
        assert rf.verify() == 1
        assert rf.ranges() == [(0, 3 * BLOCK), (4 * BLOCK, 4 * BLOCK)]
        rf.write(3 * BLOCK, data[3 * BLOCK : 4 * BLOCK])
        assert rf.is_complete
    raw = control_path(result).read_bytes()
    hashes = raw[4096 + 8 :]
    assert int.from_bytes(hashes[:8], "little") == xxhash.xxh3_64_intdigest(data[:BLOCK])


def test_scattered_pieces_never_over_report(tmp_path: Path) -> None:
    """Pieces too scattered to track leave blocks unmarked, never wrong; rewrites complete them."""
    result = tmp_path / "f.bin"
    block = 1 << 16
    data = os.urandom(4 * block)
    rnd = random.Random(7)
    pieces = pieces_of(len(data), [rnd.randrange(len(data)) for _ in range(2000)])
    rnd.shuffle(pieces)
    with RangeFile(result, len(data), block) as rf:
        for off, n in pieces[: len(pieces) // 2]:
            rf.write(off, data[off : off + n])
        for off, n in rf.ranges():
            assert rf.read(off, n) == data[off : off + n]
        assert rf.verify() == 0
        rf.write(0, data)
        assert rf.ranges() == [(0, len(data))]
        assert rf.bytes_written == len(data) + sum(n for _, n in pieces[: len(pieces) // 2])


@pytest.mark.parametrize("mode", list(MODES))
def test_every_block_partial_at_once_completes(tmp_path: Path, mode: str) -> None:
    """A file tracks as many partial blocks as it has blocks (its slot pool is sized to
    them, no larger): every block half written at once, then the other halves, gives
    every block, each hash right."""
    result = tmp_path / "f.bin"
    data = os.urandom(5 * BLOCK + 700)
    staged, direct = MODES[mode]
    with RangeFile(result, len(data), BLOCK, staged=staged, direct=direct) as rf:
        for start in range(0, len(data), BLOCK):
            rf.write(start + 100, data[start + 100 : min(start + BLOCK, len(data))])
        rf.flush()
        assert rf.ranges() == []
        for start in range(0, len(data), BLOCK):
            rf.write(start, data[start : start + 100])
        rf.flush()
        assert rf.ranges() == [(0, len(data))]
        assert rf.verify() == 0
        assert rf.finish() == result
    assert result.read_bytes() == data


def test_finish_refuses_incomplete_and_discard_removes_both(tmp_path: Path) -> None:
    """An incomplete download never takes the final name; discard leaves nothing behind."""
    result = tmp_path / "f.bin"
    rf = RangeFile(result, 3 * BLOCK, BLOCK)
    rf.write(0, b"x" * BLOCK)
    with pytest.raises(InvalidStateError):
        rf.finish()
    assert not result.exists()
    rf.discard()
    assert not part_path(result).exists()
    assert not control_path(result).exists()
    with pytest.raises(InvalidStateError):
        rf.write(0, b"x")


def test_empty_file_finishes(tmp_path: Path) -> None:
    """A zero-byte download is complete at once and finishes to an empty file."""
    result = tmp_path / "empty"
    rf = RangeFile(result, 0, BLOCK)
    assert rf.is_complete
    assert rf.ranges() == []
    rf.finish()
    assert result.read_bytes() == b""


def test_bad_arguments_are_typed_errors(tmp_path: Path) -> None:
    """Block sizes, offsets and validators out of range raise InvalidRequestError (a ValueError)."""
    for bad in (0, 1000, 256, 1 << 31):
        with pytest.raises(InvalidRequestError):
            RangeFile(tmp_path / "a", 10, bad)
    with pytest.raises(ValueError, match="size"):
        RangeFile(tmp_path / "a", -1, BLOCK)
    with pytest.raises(InvalidRequestError):
        RangeFile(tmp_path / "a", 10, BLOCK, etag="x" * 300)
    rf = RangeFile(tmp_path / "b", 10, BLOCK)
    with pytest.raises(InvalidRequestError):
        rf.write(5, b"123456")
    with pytest.raises(InvalidRequestError):
        rf.range_complete(0, 11)
    rf.discard()


def test_reopen_without_control_file_is_storage_error(tmp_path: Path) -> None:
    """create=False on a download that does not exist raises StorageError with ENOENT."""
    with pytest.raises(StorageError) as info:
        RangeFile(tmp_path / "none", 10, BLOCK, create=False)
    assert info.value.errno == 2
    assert isinstance(info.value, OSError)


def test_control_file_is_owner_only(tmp_path: Path) -> None:
    """The control file (validators, hashes) is created with mode 0600."""
    result = tmp_path / "f"
    with RangeFile(result, 10, BLOCK):
        mode = stat.S_IMODE(control_path(result).stat().st_mode)
    assert mode == 0o600


def test_symlinked_partial_file_is_not_followed(tmp_path: Path) -> None:
    """A symlink of ours at the partial name is replaced (O_EXCL), never written through."""
    result = tmp_path / "f"
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    part_path(result).symlink_to(target)
    with RangeFile(result, 10, BLOCK):
        assert not part_path(result).is_symlink()
    assert target.read_bytes() == b"keep"


def test_peek_tells_size_and_block_size_of_a_download_under_way(tmp_path: Path) -> None:
    """peek() reads an existing control file's size and block size, None when there is none."""
    result = tmp_path / "f.bin"
    assert peek(result) is None
    RangeFile(result, 5 * BLOCK + 1, 2 * BLOCK).close()
    assert peek(result) == (5 * BLOCK + 1, 2 * BLOCK)


def test_staged_pieces_mark_nothing_until_they_reach_the_file(tmp_path: Path) -> None:
    """Small pieces are gathered in memory: their blocks stay unmarked until drained."""
    result = tmp_path / "f.bin"
    size = 256 * 1024
    data = os.urandom(size)
    with RangeFile(result, size, 4096, direct=False) as rf:
        assert rf.staged
        for off in range(0, 32 * 1024, 8 * 1024):  # 32 KiB: under one 64 KiB run
            assert rf.write(off, data[off : off + 8 * 1024]) == 0
        assert rf.bytes_complete == 0  # still staged: not in the file, not marked
        assert rf.drain() == 8
        assert rf.bytes_complete == 32 * 1024
        assert part_path(result).read_bytes()[: 32 * 1024] == data[: 32 * 1024]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_a_later_write_over_a_staged_run_wins(tmp_path: Path, direct: bool) -> None:
    """A write overlapping staged bytes lands after them, whatever its size."""
    result = tmp_path / "f.bin"
    size = 512 * 1024
    old, new = os.urandom(size), os.urandom(size)
    with RangeFile(result, size, 4096, direct=direct) as rf:
        rf.write(0, old[:40_000])  # staged
        rf.write(20_000, new[20_000:30_000])  # overlaps the staged run: staged after it
        rf.write(0, new[:8192])  # overlaps again
        rf.write(100_000, old[100_000:400_000])  # large: straight to the file
        rf.write(150_000, new[150_000:160_000])  # staged over it
        rf.drain()
        got = rf.read(0, size)
    want = bytearray(old)
    want[0:8192] = new[:8192]
    want[20_000:30_000] = new[20_000:30_000]
    want[150_000:160_000] = new[150_000:160_000]
    assert got[:40_000] == want[:40_000]
    assert got[100_000:400_000] == want[100_000:400_000]


def test_close_writes_staged_pieces_and_reopen_sees_them(tmp_path: Path) -> None:
    """close() drains the stages, so a clean stop loses nothing it was given."""
    result = tmp_path / "f.bin"
    data = os.urandom(64 * 1024)
    rf = RangeFile(result, len(data), 4096)
    rf.write(0, data[:16384])
    rf.close()
    with RangeFile(result, len(data), 4096, create=False) as again:
        assert again.ranges() == [(0, 16384)]
        assert again.verify() == 0


def test_read_after_close_is_a_clear_error(tmp_path: Path) -> None:
    """read() of a closed file raises InvalidStateError instead of touching an unmapped view."""
    rf = RangeFile(tmp_path / "f", 8192, BLOCK)
    rf.write(0, b"x" * 8192)
    rf.drain()  # a staged run reaches the file on drain (or once complete blocks say so)
    assert rf.read(4096, 10) == b"x" * 10
    rf.close()
    with pytest.raises(InvalidStateError):
        rf.read(0, 10)


def _takes_direct_io(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True


def test_direct_runs_complete_their_blocks_once_written(tmp_path: Path) -> None:
    """With O_DIRECT, a run goes to the writer threads when its block is full: its bit is
    set once that write is back (reap, a later write or a query), never before."""
    if not _takes_direct_io(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    result = tmp_path / "d.bin"
    size = 4 * 1024 * 1024 + 12345  # a ragged last block goes through the page cache
    data = os.urandom(size)
    with RangeFile(result, size, 1 << 20) as rf:
        assert rf.direct
        piece = 16 * 1024 + 7  # libcurl-sized, never page-aligned
        for off in range(0, size, piece):
            rf.write(off, data[off : off + piece])
        rf.drain()
        assert rf.ranges() == [(0, size)]
        assert rf.verify() == 0  # the stored hashes match what the disk holds
        assert rf.read(0, size) == data
        rf.finish()
    assert result.read_bytes() == data


def test_a_forked_child_gets_writer_threads_of_its_own(tmp_path: Path) -> None:
    """Threads do not survive fork(): a child writing a direct file starts its own
    writers (rather than queueing for threads that are not there), and the parent's
    go on with the parent's file."""
    if not _takes_direct_io(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    data = os.urandom(4 << 20)
    piece = 16 * 1024
    parent = RangeFile(tmp_path / "parent.bin", len(data), 1 << 20)
    for off in range(0, 1 << 20, piece):  # the parent's writer threads are running
        parent.write(off, data[off : off + piece])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: exit status 0 only for a byte-exact file
        code = 1
        try:
            child = RangeFile(tmp_path / "child.bin", len(data), 1 << 20)
            for off in range(0, len(data), piece):
                child.write(off, data[off : off + piece])
            child.finish()
            code = 0 if (tmp_path / "child.bin").read_bytes() == data else 2
        finally:
            os._exit(code)
    for off in range(1 << 20, len(data), piece):
        parent.write(off, data[off : off + piece])
    parent.finish()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "parent.bin").read_bytes() == data
