"""Passwords stay off the command line: -u USER with $BGTRANSFER_PASSWORD or a netrc
file, and one given on the command line anyway is wiped from what ps shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FaultServer

SECRET = "s3cretPW"


@pytest.fixture
def guarded(body: bytes) -> Iterator[FaultServer]:
    """The fault server, asking for bob's Basic login."""
    server = FaultServer(body)
    server.auth = f"bob:{SECRET}"
    try:
        yield server
    finally:
        server.close()


def bgt(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "-q", "--state-dir", str(cwd / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("how", ["url", "user"])
def test_a_password_on_the_command_line_is_wiped_from_ps(
    guarded: FaultServer, body: bytes, tmp_path: Path, how: str
) -> None:
    """While the download runs, /proc/PID/cmdline (what ps shows) holds stars, not the
    password; the login still works."""
    guarded.rate = 2 << 20  # per connection: the download lasts a while
    url = guarded.url
    login = ["-u", f"bob:{SECRET}"] if how == "user" else []
    if how == "url":
        url = url.replace("//", f"//bob:{SECRET}@")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "get",
            url,
            *login,
            "-c",
            "1",
            "-o",
            "out.bin",
            "-q",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 30
        shown = cmdline.read_bytes()
        while SECRET.encode() in shown or b"get" not in shown:  # (empty while it execs)
            assert time.monotonic() < deadline, "the password stayed on the command line"
            time.sleep(0.005)
            shown = cmdline.read_bytes()
        assert proc.poll() is None, "it ended before its title was wiped"
        assert b"*" * len(SECRET) in shown
        assert b"bob" in shown
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert (tmp_path / "out.bin").read_bytes() == body
    finally:
        proc.kill()
        proc.communicate()


def test_user_without_password_reads_the_environment(
    guarded: FaultServer, body: bytes, tmp_path: Path
) -> None:
    """-u bob and $BGTRANSFER_PASSWORD: logged in, no password on the command line."""
    done = bgt(
        "get",
        guarded.url,
        "-u",
        "bob",
        "-o",
        "a.bin",
        cwd=tmp_path,
        env={"BGTRANSFER_PASSWORD": SECRET},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.bin").read_bytes() == body


def test_netrc_file_gives_the_login_of_the_host(
    guarded: FaultServer, body: bytes, tmp_path: Path
) -> None:
    """--netrc-file FILE (curl's name): the host's login and password from the file."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {SECRET}\n")
    netrc.chmod(0o600)
    done = bgt("get", guarded.url, "--netrc-file", str(netrc), "-o", "n.bin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "n.bin").read_bytes() == body
    done = bgt("get", guarded.url, "-o", "m.bin", cwd=tmp_path)  # without it: refused
    assert done.returncode == 1
    assert "401" in done.stderr


def test_user_without_password_and_nowhere_to_read_it_says_where(
    guarded: FaultServer, tmp_path: Path
) -> None:
    """-u bob with no terminal, no environment variable and no netrc: status 2 naming
    the ways to give the password."""
    env = {k: v for k, v in os.environ.items() if k != "BGTRANSFER_PASSWORD"}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "get", guarded.url, "-u", "bob", "-o", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "BGTRANSFER_PASSWORD" in done.stderr
    assert "--netrc" in done.stderr


def test_help_says_how_passwords_are_kept_off_the_command_line(tmp_path: Path) -> None:
    """get --help names the safe ways and says a command-line password is wiped."""
    done = subprocess.run(
        [sys.executable, "-m", "engine", "get", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    text = " ".join(done.stdout.split())
    assert "BGTRANSFER_PASSWORD" in text
    assert "--netrc-file" in text
    assert "wiped from the process title" in text
