"""A mirror list can neither collide with the engine's side files, nor destroy a file
it names, nor take another user's file for complete; its names de-duplicate in
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
from engine.cli.names import Entry, unique_names

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


def test_a_name_ending_like_a_side_file_is_renamed(nginx: Nginx, tmp_path: Path) -> None:
    """``x`` and ``x.bgtpart`` on one list: each file its own bytes, nothing mixed."""
    out = tmp_path / "out"
    done = mirror(f"{nginx.url('big.bin')} x\n{nginx.url('small.bin')} x.bgtpart\n", out, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "x").read_bytes() == (nginx.www / "big.bin").read_bytes()
    assert (out / "x.bgtpart_").read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert sorted(os.listdir(out)) == ["x", "x.bgtpart_"]


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
    """De-duplicating n equal names makes O(n) builtin calls, not O(n^2)."""
    entries = [Entry("http://h/f.bin", "f.bin", None)] * 10_000
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "c_call"

    sys.setprofile(count)
    try:
        names = [e.name for e in unique_names(entries)[0]]
    finally:
        sys.setprofile(None)
    assert names[:3] == ["f.bin", "f.1.bin", "f.2.bin"]
    assert len(set(names)) == 10_000
    assert calls < 20 * len(entries)


def test_the_api_refuses_a_result_named_like_a_side_file(
    nginx: Nginx, tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader]
) -> None:
    """create_download refuses a result ending in .bgtpart, .bgtctl or .bgtctl.new."""
    d = make_downloader()
    for name in ("x.bgtpart", "x.bgtctl", "x.bgtctl.new"):
        with pytest.raises(InvalidRequestError, match="kept for bgtransfer"):
            d.create_download(nginx.url("small.bin"), tmp_path / name)
