"""The ways bytes reach the disk, each behind the same sink calls, without a server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine._disk.core import RangeFile, control_path, part_path, peek
from engine._download.sinks import (
    HOLD,
    KEPT_BLOCK,
    MemorySink,
    PlainFileSink,
    RangeSink,
    Sink,
    open_range_file,
    plain_sink,
)
from engine.config import TransferConfig
from engine.errors import InvalidStateError

Run = Callable[[Any], Any]


def _feed(sink: Sink, data: bytes, at: int = 0) -> None:
    view = memoryview(data)
    for pos in range(0, len(data), 16384):
        sink.write(at + pos, view[pos : pos + 16384])


def test_a_small_body_is_held_whole_and_written_once_at_the_finish(
    tmp_path: Path, run: Run
) -> None:
    """A body of known size within HOLD stays in memory (no partial file while it
    arrives); a retry from zero replaces it; the finish writes it under its name."""
    out = tmp_path / "small.bin"
    body = os.urandom(100_000)
    sink = plain_sink(str(out), len(body), TransferConfig())
    assert isinstance(sink, MemorySink)
    _feed(sink, os.urandom(40_000))
    _feed(sink, body)  # a server without ranges: the retry starts from zero
    assert not part_path(out).exists()
    assert (sink.reached, sink.complete) == (len(body), True)
    assert sink.hold(len(body), len(body)) is sink.held
    assert run(sink.finish(False)) == len(body)
    assert out.read_bytes() == body


def test_a_gap_in_a_held_body_is_refused(tmp_path: Path) -> None:
    """A plain body goes on where it stopped: a piece past its end is an error, never a hole."""
    sink = MemorySink(str(tmp_path / "f"), 1000, TransferConfig())
    sink.write(0, memoryview(b"x" * 10))
    with pytest.raises(InvalidStateError):
        sink.write(20, memoryview(b"y"))


def test_a_larger_body_spills_runs_to_its_partial_file(tmp_path: Path, run: Run) -> None:
    """Past HOLD the runs before the last go to the partial file; the finish writes the
    last run and renames: the file is byte-exact, no partial file is left."""
    out = tmp_path / "plain.bin"
    body = os.urandom(3 * HOLD + 12345)
    sink = plain_sink(str(out), None, TransferConfig())  # unknown length
    assert isinstance(sink, PlainFileSink)
    _feed(sink, body)
    assert part_path(out).exists()
    assert sink.reached == len(body)
    assert not sink.complete  # unknown length: only the server says where it ends
    assert run(sink.digest("sha256")) == hashlib.sha256(body).hexdigest()
    assert run(sink.finish(False)) == len(body)
    assert out.read_bytes() == body
    assert not part_path(out).exists()


@pytest.mark.parametrize("size", [100_000, 3 * HOLD + 5])
def test_a_stopped_plain_body_is_kept_in_small_blocks(tmp_path: Path, size: int) -> None:
    """What a plain body had when it stopped goes into a range file of KEPT_BLOCK
    blocks, whose complete blocks hold exactly those bytes."""
    out = tmp_path / "kept.bin"
    body = os.urandom(size)
    got = size * 2 // 3
    sink = plain_sink(str(out), size, TransferConfig())
    _feed(sink, body[:got])
    told: list[bool] = []
    sink.keep('"v1"', "", lambda: told.append(True))
    sink.close()
    assert told == [True]
    assert peek(out) == (size, KEPT_BLOCK)
    with RangeFile(out, size, KEPT_BLOCK, create=False) as rf:
        ranges = rf.ranges()
        assert ranges == [(0, got - got % KEPT_BLOCK)]
        assert rf.read(0, ranges[0][1]) == body[: ranges[0][1]]
        assert rf.etag == '"v1"'


def test_a_range_file_takes_pieces_through_the_core_itself(tmp_path: Path, run: Run) -> None:
    """A range sink's write is the range file's own C call (no Python layer between the
    write callback and C), it counts progress, and its finish renames the file."""
    out = tmp_path / "ranged.bin"
    body = os.urandom(1 << 20)
    config = TransferConfig(block_size=1 << 16)
    rf = open_range_file(out, len(body), config, "", "", create=True)
    sink = RangeSink(rf)
    assert sink.write is rf.write
    assert sink.hold(0, 100) is None
    _feed(sink, body[512_000:], 512_000)
    _feed(sink, body[:512_000])
    assert sink.reached == len(body)
    assert sink.complete
    assert run(sink.finish(False)) == len(body)
    assert out.read_bytes() == body
    assert not control_path(out).exists()
