"""The C core's tunables come from TransferConfig: they reach the core, bad ones are
refused, and a download with other values is still byte-exact.  Real files, real
threads, real nginx."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine._native import ffi, lib
from polling import wait_for
from servers import Nginx, sha256

from engine import BackgroundDownloader, TransferConfig
from engine._disk.core import RangeFile, c_tuning, control_path, control_tmp_path, part_path
from engine._disk.tuning import DEFAULT_TUNING, Tuning
from engine.config import MAX_STAGE_SIZE, MAX_THREADS, Durability
from engine.errors import InvalidRequestError

Make = Callable[..., BackgroundDownloader]
KIB = 1 << 10


def _tuned(**changes: Any) -> Tuning:
    return dataclasses.replace(DEFAULT_TUNING, **changes)


def test_defaults_are_the_ones_the_core_was_measured_with() -> None:
    """A default TransferConfig asks the core for 64 KiB stages, 1 MiB runs, 16 MiB of
    stages, 4 writer and 16 sync threads."""
    config = TransferConfig()
    assert (config.stage_size, config.max_stage_size, config.stage_memory) == (
        64 * KIB,
        1 << 20,
        16 << 20,
    )
    assert (config.writer_threads, config.sync_threads) == (4, 16)
    assert Tuning.of(config) == DEFAULT_TUNING


def test_the_configs_bounds_are_the_cores() -> None:
    """What TransferConfig accepts is what the core accepts."""
    assert MAX_STAGE_SIZE == lib.RF_MAX_STAGE_SIZE
    assert MAX_THREADS == lib.DIO_MAX_THREADS == lib.FL_MAX_SYNCERS
    assert TransferConfig(stage_size=lib.DIO_ALIGN, max_stage_size=MAX_STAGE_SIZE)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage_size": 3000}, "stage_size must be a power of two from 4096 to 67108864 bytes"),
        ({"stage_size": 2048}, "stage_size must be a power of two from 4096"),
        ({"stage_size": 128 << 20}, "stage_size must be a power of two"),
        ({"stage_size": 1 << 20, "max_stage_size": 64 * KIB}, "max_stage_size must be a power"),
        ({"max_stage_size": 3 << 20}, "max_stage_size must be a power of two from 65536"),
        (
            {"stage_memory": -1},
            r"stage_memory must be a number of bytes from 0 to 2\*\*63 - 1, not -1",
        ),
        ({"stage_memory": 1 << 63}, "stage_memory must be a number of bytes from 0"),
        ({"stage_memory": 1.5}, "stage_memory must be a number of bytes"),
        ({"writer_threads": 0}, "writer_threads must be from 1 to 64, not 0"),
        ({"writer_threads": 65}, "writer_threads must be from 1 to 64, not 65"),
        ({"sync_threads": True}, "sync_threads must be from 1 to 64, not True"),
        ({"sync_threads": "4"}, "sync_threads must be from 1 to 64, not '4'"),
    ],
)
def test_a_bad_value_is_refused_in_the_users_words(changes: dict[str, Any], message: str) -> None:
    """A bad stage size, memory budget or thread count is an InvalidRequestError (a
    ValueError) that names the setting and its range, before anything runs."""
    with pytest.raises(InvalidRequestError, match=message) as refused:
        TransferConfig(**changes)
    assert isinstance(refused.value, ValueError)


def test_the_core_refuses_a_tuning_it_cannot_honour(tmp_path: Path) -> None:
    """A tuning that bypassed TransferConfig is refused by the core, with nothing made."""
    result = tmp_path / "r.bin"
    for bad in (_tuned(stage_size=3000), _tuned(threaded_stages=33), _tuned(stages=0)):
        with pytest.raises(InvalidRequestError):
            RangeFile(result, 1 << 20, 4096, tuning=bad)
    assert list(tmp_path.iterdir()) == []


def test_the_stage_size_decides_which_pieces_are_staged(tmp_path: Path) -> None:
    """An 8 KiB piece is staged under 64 KiB stages (its blocks wait), and written at
    once under 4 KiB stages (its blocks complete on return)."""
    piece = os.urandom(8 * KIB)
    with RangeFile(tmp_path / "a.bin", 1 << 20, 4096, direct=False) as default:
        assert default.write(0, piece) == 0
        assert default.drain() == 2
    small = _tuned(stage_size=4 * KIB, max_stage_size=4 * KIB)
    with RangeFile(tmp_path / "b.bin", 1 << 20, 4096, direct=False, tuning=small) as rf:
        assert rf.write(0, piece) == 2
        assert rf.read(0, len(piece)) == piece


def test_no_stage_memory_sends_every_piece_to_the_page_cache_at_once(tmp_path: Path) -> None:
    """With stage_memory 0 a threaded file holds no run for the writer threads: a whole
    block completes on the write that brings it."""
    block = os.urandom(1 << 20)
    tuning = _tuned(stage_memory=0)
    with RangeFile(
        tmp_path / "c.bin", 4 << 20, 1 << 20, direct=False, writeback=True, tuning=tuning
    ) as rf:
        assert rf.threaded
        assert rf.write(0, block) == 1
        assert rf.bytes_complete == len(block)


def test_the_largest_run_goes_to_the_writers_when_full(tmp_path: Path) -> None:
    """With 64 KiB runs a 64 KiB piece of a 1 MiB block is handed to the writer threads
    at once, and reaches the file without a drain (1 MiB runs would hold it)."""
    piece = os.urandom(64 * KIB)
    tuning = _tuned(max_stage_size=64 * KIB)
    with RangeFile(
        tmp_path / "d.bin", 4 << 20, 1 << 20, direct=False, writeback=True, tuning=tuning
    ) as rf:
        rf.write(0, piece)
        wait_for(lambda: rf.read(0, len(piece)) == piece)


def _threads_after(code: str, where: Path) -> int:
    """Threads of a fresh interpreter after ``code`` ran in it, in ``where`` (not the
    source tree: the installed package is the one tested)."""
    script = textwrap.dedent(code) + "\nprint(len(os.listdir('/proc/self/task')))\n"
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=where,
    )
    return int(out.stdout.split()[-1])


_WRITE = """
import os, dataclasses, pathlib
from engine._disk.core import RangeFile
from engine._disk.tuning import DEFAULT_TUNING
t = dataclasses.replace(DEFAULT_TUNING, writer_threads={n})
d = pathlib.Path.cwd()
rf = RangeFile(d / "f", 2 << 20, 1 << 20, direct=False, writeback=True, tuning=t)
rf.write(0, os.urandom(1 << 20))  # a whole run: submitted, threads started
rf.drain()
"""


def test_writer_threads_start_as_many_writers(tmp_path: Path) -> None:
    """writer_threads=9 starts eight more writer threads than writer_threads=1."""
    nine, one = (_threads_after(_WRITE.format(n=n), tmp_path) for n in (9, 1))
    assert nine - one == 8


_FINISH = """
import asyncio, dataclasses, os, pathlib
from engine._disk.files import filer
from engine._disk.tuning import DEFAULT_TUNING
d = pathlib.Path.cwd()
for i, n in enumerate({counts}):
    t = dataclasses.replace(DEFAULT_TUNING, sync_threads=n)
    asyncio.run(filer().finish(-1, d / str(i), b"x", tuning=t))
"""


def test_sync_threads_start_as_many_syncers_and_a_later_ask_adds_more(tmp_path: Path) -> None:
    """The filer starts the sync threads the first download asks for, and a later
    download asking for more gets the difference (never fewer than before)."""
    one = _threads_after(_FINISH.format(counts=[1]), tmp_path)
    assert _threads_after(_FINISH.format(counts=[5]), tmp_path) - one == 4
    assert _threads_after(_FINISH.format(counts=[5, 2, 7]), tmp_path) - one == 6


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_download_with_other_tunables_is_byte_exact(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, durability: Durability
) -> None:
    """Small stages and runs, little stage memory and one writer thread: 48 MiB over
    ranges and a small file both end byte-exact, with nothing beside them."""
    config = TransferConfig(
        block_size=1 << 16,
        durability=durability,
        stage_size=16 * KIB,
        max_stage_size=32 * KIB,
        stage_memory=256 * KIB,
        writer_threads=1,
        sync_threads=1,
    )
    downloader = make_downloader(config=config)
    for name in ("big.bin", "small.bin"):
        out = tmp_path / name
        op = downloader.create_download(nginx.url(name), out)
        op.start()
        assert op.wait(120) is op
        assert sha256(out) == sha256(nginx.www / name)
        assert not part_path(out).exists()
        assert not control_path(out).exists()


def _finish_stale(tmp_path: Path, stale: Any) -> Path:
    """One filer job that finds a stale partial file of ``r.bin``; ``stale`` as given."""
    result = tmp_path / "r.bin"
    part_path(result).write_bytes(b"stale")
    f = lib.fl_new(1, 64 * KIB)
    ch = lib.fl_channel_new()
    name = os.fsencode(result)
    rc = lib.fl_finish(f, ch, 1, -1, os.fsencode(part_path(result)), name, stale, b"new", 3, 0, 0)
    assert rc == 0
    wait_for(result.exists)
    lib.fl_channel_close(f, ch)
    assert result.read_bytes() == b"new"
    return result


def test_the_filer_removes_only_the_stale_file_it_is_told(tmp_path: Path) -> None:
    """Replacing a stale partial file, the filer removes the file the caller names
    beside it, and no control file it was not told of."""
    control_path(tmp_path / "r.bin").write_bytes(b"an earlier run's")
    told = tmp_path / "told"
    told.write_bytes(b"x")
    _finish_stale(tmp_path, os.fsencode(told))
    assert not told.exists()
    assert control_path(tmp_path / "r.bin").read_bytes() == b"an earlier run's"
    (tmp_path / "r.bin").unlink()
    _finish_stale(tmp_path, ffi.NULL)
    assert control_path(tmp_path / "r.bin").exists()


def test_a_new_control_file_is_written_where_python_says(tmp_path: Path) -> None:
    """rf_open writes the new control file under the temporary name it is given and
    leaves a file under any name it was not given alone."""
    result = tmp_path / "r.bin"
    untouched = control_tmp_path(result)
    untouched.write_bytes(b"not the core's to remove")
    tmp = tmp_path / "elsewhere.tmp"
    f = ffi.new("rf_file *")
    size, shift = 1 << 20, 12
    ws_len = lib.rf_workspace_size(size, shift)
    ws = ffi.new("char[]", ws_len)
    paths = [os.fsencode(p) for p in (part_path(result), control_path(result), tmp)]
    rc = lib.rf_open(f, ws, ws_len, *paths, size, shift, b"", b"", lib.RF_OPEN_CREATE,
                     c_tuning(DEFAULT_TUNING))  # fmt: skip
    assert rc == 0
    lib.rf_close(f)
    assert untouched.read_bytes() == b"not the core's to remove"
    assert control_path(result).exists()
    assert not tmp.exists()


def test_a_spilled_small_file_takes_the_stale_control_file_with_it(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """A file fetched in one request that outgrows memory (3 MiB) replaces a partial
    file no state database knows, and the control file beside it does not outlive the
    result: the rule the filer follows for a body held whole."""
    (nginx.www / "spills.bin").write_bytes(os.urandom(3 << 20))
    out = tmp_path / "spills.bin"
    part_path(out).write_bytes(b"stale partial data " * 1000)
    control_path(out).write_bytes(b"not a control file")
    op = make_downloader().create_download(nginx.url("spills.bin"), out)
    op.start()
    assert op.wait(60) is op
    assert sha256(out) == sha256(nginx.www / "spills.bin")
    assert not part_path(out).exists()
    assert not control_path(out).exists()
