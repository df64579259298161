"""A mirror list can neither collide with the engine's side files, nor destroy a file
it names, nor take another user's file for complete; its duplicate names are found in
linear time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from attacker import Attacker, attacker
from servers import Nginx

from engine import BackgroundDownloader, InvalidRequestError
from engine.cli.names import BadLine, Entry, parse_lines

__all__ = ["attacker"]  # the fixture, imported for pytest


def mirror(text: str, target: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "mirror",
            "-i",
            "-",
            "-d",
            str(target),
            "-q",
            "--state-dir",
            str(cwd / "state"),
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_a_name_ending_like_a_side_file_is_a_bad_line(nginx: Nginx, tmp_path: Path) -> None:
    """``x`` and ``x.bgtpart`` on one list: the second is a bad line (status 1), ``x``
    gets its own bytes, and nothing else is written."""
    out = tmp_path / "out"
    done = mirror(f"{nginx.url('big.bin')} x\n{nginx.url('small.bin')} x.bgtpart\n", out, tmp_path)
    assert done.returncode == 1
    assert "-:2: the name 'x.bgtpart' ends like the files bgtransfer keeps" in done.stderr
    assert (out / "x").read_bytes() == (nginx.www / "big.bin").read_bytes()
    assert sorted(os.listdir(out)) == ["x"]


def test_a_wrong_checksum_never_deletes_the_file_before_a_good_download(
    nginx: Nginx, tmp_path: Path
) -> None:
    """A line naming an existing file with a wrong checksum, whose download fails,
    leaves that file (here the list itself) as it was."""
    out = tmp_path / "out"
    out.mkdir()
    listed = out / "list.txt"
    text = f"{nginx.url('missing.bin')} list.txt sha256={'0' * 64}\n"
    listed.write_text(text)
    done = mirror(text, out, tmp_path)
    assert done.returncode == 1
    assert listed.read_text() == text


def test_another_users_file_is_never_already_complete(
    attacker: Attacker, nginx: Nginx, tmp_path: Path
) -> None:
    """A file another user put under a listed name, with no checksum to verify it, is
    downloaded again (and replaced), not counted as already complete."""
    attacker.run("open('small.bin', 'wb').write(b'not the file')")
    done = mirror(f"{nginx.url('small.bin')}\n", attacker.shared, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 downloaded, 0 already complete" in done.stderr
    got = attacker.shared / "small.bin"
    assert got.read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert got.stat().st_uid == os.geteuid()


def test_ten_thousand_equal_names_take_linear_work() -> None:
    """Finding the duplicates among n equal names makes O(n) builtin calls, not
    O(n^2): the first is kept, every other one is a bad line naming line 1."""
    lines = ["http://h/f.bin"] * 10_000
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "c_call"

    sys.setprofile(count)
    try:
        found = list(parse_lines(lines, "l"))
    finally:
        sys.setprofile(None)
    assert found[0] == Entry("http://h/f.bin", "f.bin", None, 1)
    assert all(isinstance(b, BadLine) for b in found[1:])
    assert found[-1] == BadLine(10_000, "l:10000: the name 'f.bin' is already used by line 1")
    assert calls < 40 * len(lines)


def test_the_api_refuses_a_result_named_like_a_side_file(
    nginx: Nginx, tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader]
) -> None:
    """create_download refuses a result ending in .bgtpart, .bgtctl or .bgtctl.new."""
    d = make_downloader()
    for name in ("x.bgtpart", "x.bgtctl", "x.bgtctl.new"):
        with pytest.raises(InvalidRequestError, match="kept for bgtransfer"):
            d.create_download(nginx.url("small.bin"), tmp_path / name)
