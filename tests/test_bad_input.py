"""Input no server or user should send ends in one clear line, leaves nothing running,
and a low descriptor limit makes downloads wait, not fail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import RawServer, ok, ranged

BODY = os.urandom(4_300_000)  # past the first request's 4 MiB: a file with ranges


def bgt(*args: str, cwd: Path, shell_prefix: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "engine", *args, "--state-dir", str(cwd / "state")]
    if shell_prefix:
        command = ["bash", "-c", f'{shell_prefix}; exec "$@"', "bash", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def raw() -> Iterator[RawServer]:
    """Answers by path: /huge-length, /huge-header, else the ranged BODY."""

    def respond(path: str, headers: dict[str, str], conn: socket.socket) -> None:
        if path == "/huge-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nabc")
            conn.shutdown(socket.SHUT_RDWR)
        elif path == "/huge-header":
            ok(conn, b"abc", "X-Big: " + "a" * (1 << 20) + "\r\n")
        else:
            ranged(conn, headers, BODY)

    server = RawServer(respond)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("where", ["header", "host"])
def test_non_ascii_header_or_host_is_refused_and_nothing_stays_running(
    raw: RawServer, tmp_path: Path, where: str
) -> None:
    """A non-ASCII header value or host: status 2 naming it; no operation is left
    RUNNING for a later resume --all to trip on."""
    args = ["-H", "X-Name: caf\u00e9"] if where == "header" else []
    url = raw.url() if where == "header" else "http://caf\u00e9.invalid/x"
    done = bgt("get", url, *args, "-o", "x", cwd=tmp_path)
    assert done.returncode == 2
    assert "non-ASCII" in done.stderr
    assert "Traceback" not in done.stderr
    assert bgt("list", cwd=tmp_path).stdout == ""
    assert bgt("resume", "--all", cwd=tmp_path).returncode == 0


def test_a_content_length_of_2_63_is_one_line_not_a_traceback(
    raw: RawServer, tmp_path: Path
) -> None:
    """Content-Length 2^63-1: status 1 and a disk-full line naming the sizes."""
    done = bgt("get", raw.url("huge-length"), "-o", "x", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "No space left" in done.stderr


def test_a_one_megabyte_header_line_is_named(raw: RawServer, tmp_path: Path) -> None:
    """A 1 MB header line: the error says a response header was too large."""
    done = bgt("get", raw.url("huge-header"), "-o", "x", cwd=tmp_path)
    assert done.returncode == 1
    assert "response header larger than accepted" in done.stderr


def test_many_files_under_a_low_descriptor_limit_wait_instead_of_failing(
    raw: RawServer, tmp_path: Path
) -> None:
    """60 files with ranges at once under ``ulimit -n 64``: every one completes."""
    listing = "".join(f"{raw.url(f'f{i}')} f{i}\n" for i in range(60))
    (tmp_path / "list").write_text(listing)
    done = bgt(
        "mirror",
        "-i",
        "list",
        "-d",
        "out",
        "-j",
        "60",
        "-q",
        cwd=tmp_path,
        shell_prefix="ulimit -n 64",
    )
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / "out" / f"f{i}").read_bytes() == BODY for i in range(60))
