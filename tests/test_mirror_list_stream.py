"""A mirror list is read as a stream: its first entry comes before the rest is
written, a million lines fit in bounded memory, and every kind of bad line is told
with its number while every good line is still mirrored."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import argv
from servers import Nginx

from engine import InvalidRequestError
from engine.cli.names import iter_list
from engine.cli.seen import NameSet

MILLION = 1_000_000


def test_every_kind_of_bad_line_is_told_and_every_good_line_mirrored(
    nginx: Nginx, tmp_path: Path
) -> None:
    """A list on stdin (a BOM first) mixing good lines with each kind of bad one: each
    bad line is told once with its number, the status is 1, and every good line's file is
    byte-exact under its name (and nothing else is written)."""
    folder = nginx.www / "stream"
    folder.mkdir(exist_ok=True)
    for i in range(6):
        (folder / f"g{i}.bin").write_bytes(os.urandom(5000 + i))
    url = {i: nginx.url(f"stream/g{i}.bin") for i in range(6)}
    two = hashlib.sha256((folder / "g2.bin").read_bytes()).hexdigest()
    lines = [
        f"{url[0]}",  # 1: named by its URL
        "not-a-url",  # 2: malformed URL
        f"{url[1]} one.bin",  # 3
        "gopher://127.0.0.1/x",  # 4: unsupported scheme
        "# a comment",  # 5
        "",  # 6
        f"{url[2]} ../escape.bin",  # 7: leaves the folder
        f"{url[2]} /tmp/abs.bin",  # 8: absolute
        f"{url[2]} sub/x.bin",  # 9: a path separator
        f"{url[2]} x.bgtctl",  # 10: a side file's ending
        f"{url[2]} two.bin sha256=zz",  # 11: a bad checksum
        f"{url[2]} two.bin sha256={two}",  # 12
        f"{url[3]} ONE.bin",  # 13: line 3's name, in another case
        "http://127.0.0.1:99999/x",  # 14: a port out of range
        f"{url[3]}",  # 15
        "\udcff\udcfe",  # 16: not UTF-8
        f"{url[4]}\t{nginx.url('slow/stream/g4.bin')} four.bin",  # 17: two URLs of one file
        "http://127.0.0.1/" + "a" * 70_000,  # 18: too long
        f"{url[5]} g0.bin",  # 19: line 1's name (from its URL)
    ]
    text = b"\xef\xbb\xbf" + "\n".join(lines).encode(errors="surrogateescape") + b"\n"
    out = tmp_path / "out"
    done = subprocess.run(
        argv("mirror", "-i", "-", "-d", str(out), "-q", "--state-dir", str(tmp_path / "s")),
        input=text,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    told = [int(n) for n in re.findall(r"^bgtransfer: -:(\d+): ", err, re.MULTILINE)]
    assert told == [2, 4, 7, 8, 9, 10, 11, 13, 14, 16, 18, 19]
    assert "-:13: the name 'ONE.bin' is already used by line 3" in err
    assert "-:19: the name 'g0.bin' is already used by line 1" in err
    assert "-:7: the name '../escape.bin' leaves the folder" in err
    assert "12 bad lines in - skipped" in err
    names = {"g0.bin": 0, "one.bin": 1, "two.bin": 2, "g3.bin": 3, "four.bin": 4}
    assert sorted(os.listdir(out)) == sorted(names)
    for name, i in names.items():
        assert (out / name).read_bytes() == (folder / f"g{i}.bin").read_bytes(), name


_READER = """
import re, sys
from engine.cli.names import BadLine, iter_list

def peak():  # VmHWM: this process's peak resident memory (ru_maxrss outlives an exec)
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\\s*(\\d+) kB", fh.read())[1]) * 1024

before = peak()
found = iter_list(sys.argv[1])
first = next(found)
print(first.line, first.name, flush=True)
count, bad = 1, 0
for item in found:
    count += 1
    bad += isinstance(item, BadLine)
print(count, bad, peak() - before)
"""


def _open_for_writing(fifo: Path, reader: subprocess.Popen[str]) -> int:
    """The FIFO's writing end, once ``reader`` opened it (never a hang on a reader
    that died first)."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO or reader.poll() is not None:
                raise
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def test_a_million_lines_stream_in_bounded_memory(tmp_path: Path) -> None:
    """A reader of a 1,000,000-line list written into a FIFO has its first entry
    while the writer still holds the other lines back, and reads them all (each name
    kept for the duplicates) growing its peak resident memory by less than 96 MB,
    where the list read whole and its entries take several times that."""
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(fifo)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert reader.stdout is not None
    with os.fdopen(_open_for_writing(fifo, reader), "w") as fh:
        fh.write("http://127.0.0.1:1/dir/f0000000.bin\n")
        fh.flush()
        ready = select.select([reader.stdout], [], [], 60)[0]  # only a broken reader waits
        first = reader.stdout.readline() if ready else ""
        for start in range(1, MILLION, 10_000):
            end = min(start + 10_000, MILLION)
            fh.write("".join(f"http://127.0.0.1:1/dir/f{i:07d}.bin\n" for i in range(start, end)))
    out, _ = reader.communicate(timeout=300)
    assert first == "1 f0000000.bin\n"  # before the rest was written
    count, bad, grown = map(int, out.split())
    assert (count, bad) == (MILLION, 0)
    assert grown < 96 << 20, f"{grown / 1e6:.1f} MB"


def test_a_list_that_cannot_be_opened_is_refused_before_any_line(tmp_path: Path) -> None:
    """iter_list raises the typed error at once for a missing list or a folder."""
    with pytest.raises(InvalidRequestError, match="No such file"):
        iter_list(str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidRequestError, match="Is a directory"):
        iter_list(str(tmp_path))


def test_the_name_set_finds_every_duplicate_and_nothing_else() -> None:
    """200,000 distinct names (grown through many doublings) are all new; each again,
    in upper case, is a duplicate naming its own first line."""
    seen = NameSet()
    names = [f"d{i}.bin" for i in range(200_000)]
    assert all(seen.add(name, i + 1) == 0 for i, name in enumerate(names))
    assert all(seen.add(name.upper(), 0) == i + 1 for i, name in enumerate(names))
    assert seen.add("d1.bi", 7) == 0  # a prefix of a kept name
    assert seen.add("d1.binx", 8) == 0  # a kept name is a prefix of it
    assert len(seen) == 200_002
