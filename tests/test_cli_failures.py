"""A failed download keeps its data: listed with its reason, continued by the same
command or from a new URL, removed by cancel or the retention time; errors in words."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cli_run import argv, bgt, listed
from polling import wait_for
from servers import FaultServer, Nginx, sha256

from engine import BackgroundDownloader
from engine._disk.core import control_path, part_path

SIZE = 12 << 20
"""Three times the first request (4 MiB)."""
_LOG = re.compile(r'"GET (\S+) [^"]*" (\d+) (\d+)')


def served(nginx: Nginx, path: str) -> int:
    """Body bytes nginx's access log says it sent for ``path``, once the log stops
    growing (an aborted request is logged as nginx notices the client gone)."""
    last = None
    while True:
        lines = nginx.requests()
        if lines == last:
            break
        last = lines
        time.sleep(0.3)
    total = 0
    for line in last:
        found = _LOG.search(line)
        if found and found.group(1) == path:
            total += int(found.group(3))
    return total


def kept_bytes(state: Path) -> int:
    (op,) = BackgroundDownloader(state_dir=state).get_failed_downloads()
    return op.progress.bytes_received


def fail_midway(nginx: Nginx, tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    """``get`` of a file nginx serves at 2 MB/s that is moved away while it downloads:
    its next request answers 404, and the command fails.  One connection: no range
    is cut short by another taking half of it, which nginx would log as sent in full
    (the kernel's buffers took it), so the log counts what was fetched.  The state
    directory, the file as served, and the failed command's stderr."""
    served_file = nginx.www / name
    served_file.write_bytes(os.urandom(SIZE))
    state = tmp_path / "s"
    proc = subprocess.Popen(
        argv("get", nginx.url(f"slow/{name}"), "-o", "out.bin", "-c", "1", "-q"),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BGTRANSFER_STATE_DIR": str(state)},
    )
    wait_for(control_path(tmp_path / "out.bin").exists)
    away = served_file.with_suffix(".moved")
    served_file.rename(away)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    return state, away, err


def test_a_failed_get_is_kept_listed_and_the_same_command_continues_it(
    nginx: Nginx, tmp_path: Path
) -> None:
    """A 404 midway: exit 1 with the reason and what to do; the partial data stays and
    list shows it as ERROR with its reason; once the file is back, the same command
    continues it: nginx serves only the missing part."""
    state, away, err = fail_midway(nginx, tmp_path, "kept.bin")
    assert "the server answered 404 Not Found" in err
    assert "run the same command again to continue (the partial data is kept)" in err
    assert "curl" not in err
    assert part_path(tmp_path / "out.bin").exists()
    assert control_path(tmp_path / "out.bin").exists()
    (row,) = listed(tmp_path, state)
    assert row[1] == "ERROR"
    assert row[-1] == "the server answered 404 Not Found"
    kept = kept_bytes(state)
    assert kept >= 4 << 20
    before = served(nginx, "/slow/kept.bin")
    away.rename(nginx.www / "kept.bin")
    url = nginx.url("slow/kept.bin")
    done = bgt("get", url, "-o", "out.bin", "-q", "-c", "1", cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / "kept.bin")
    again = served(nginx, "/slow/kept.bin") - before
    assert again == SIZE - kept  # the missing part only
    assert listed(tmp_path, state) == []


def test_get_with_a_new_url_continues_the_same_file(nginx: Nginx, tmp_path: Path) -> None:
    """``get NEWURL -o SAME`` after a failure continues from the new URL (the file moved):
    nginx serves only the missing part from the new path."""
    state, away, _ = fail_midway(nginx, tmp_path, "moving.bin")
    kept = kept_bytes(state)
    new = nginx.www / "moved" / "moving.bin"
    new.parent.mkdir(exist_ok=True)
    away.rename(new)
    url = nginx.url("moved/moving.bin")
    done = bgt("get", url, "-o", "out.bin", "-c", "1", cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out.bin") == sha256(new)
    assert served(nginx, "/moved/moving.bin") == SIZE - kept


def test_resume_with_a_new_url(nginx: Nginx, tmp_path: Path) -> None:
    """``resume GUID --url NEWURL`` (a GUID prefix) continues a failed download from the
    new URL, serving only the missing part."""
    state, away, _ = fail_midway(nginx, tmp_path, "resumed.bin")
    kept = kept_bytes(state)
    (row,) = listed(tmp_path, state)
    new = nginx.www / "again" / "resumed.bin"
    new.parent.mkdir(exist_ok=True)
    away.rename(new)
    url = nginx.url("again/resumed.bin")
    done = bgt("resume", row[0][:6], "--url", url, "-q", cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out.bin") == sha256(new)
    assert served(nginx, "/again/resumed.bin") == SIZE - kept


def test_cancel_and_the_retention_time_remove_what_a_failure_kept(
    body: bytes, tmp_path: Path
) -> None:
    """What a failure keeps goes with cancel, or once older than --keep-failed (run by
    any later command); list --all then shows the canceled operation."""
    server = FaultServer(body)
    state = tmp_path / "s"
    try:
        server.rate = 4 << 20
        for name in ("a.bin", "b.bin"):
            proc = subprocess.Popen(
                argv("get", server.url, "-o", name, "-q", "-c", "1", "--state-dir", str(state)),
                cwd=tmp_path,
                stderr=subprocess.DEVNULL,
            )
            wait_for(control_path(tmp_path / name).exists)
            server.fault = "404"
            assert proc.wait(60) == 1
            server.fault = ""
    finally:
        server.close()
    rows = listed(tmp_path, state)
    assert [r[1] for r in rows] == ["ERROR", "ERROR"]
    a = next(r[0] for r in rows if r[4].endswith("a.bin"))
    assert bgt("cancel", a, cwd=tmp_path, state=state).returncode == 0
    assert not control_path(tmp_path / "a.bin").exists()
    assert not part_path(tmp_path / "a.bin").exists()
    assert [r[4] for r in listed(tmp_path, state)] == [str(tmp_path / "b.bin")]
    assert listed(tmp_path, state, "--keep-failed", "1h") != []  # younger than that
    time.sleep(1.1)
    assert listed(tmp_path, state, "--keep-failed", "1s") == []
    assert not control_path(tmp_path / "b.bin").exists()
    assert not part_path(tmp_path / "b.bin").exists()
    ended = listed(tmp_path, state, "--all")
    # b's failure was canceled by the retention; a's cancel is older than it: forgotten
    assert [(r[1], r[4]) for r in ended] == [("CANCELED", str(tmp_path / "b.bin"))]


def test_a_server_without_ranges_is_started_over_with_no_probe(body: bytes, tmp_path: Path) -> None:
    """Ctrl-C on a download from a server without ranges says that running it again
    starts over; running it again then makes one request, not probes with ranges."""
    server = FaultServer(body, "no-ranges")
    server.rate = 1 << 20
    state = tmp_path / "s"
    try:
        proc = subprocess.Popen(
            argv("get", server.url, "-o", "f.bin", "-q", "--state-dir", str(state)),
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: server.bytes_sent > 1 << 20)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "does not resume downloads (no ranges)" in err
        assert "starts over" in err
        assert "to resume" not in err
        server.rate = 0
        requests = server.requests
        done = bgt("get", server.url, "-o", "f.bin", "-q", cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "f.bin").read_bytes() == body
        assert server.requests - requests == 1
    finally:
        server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_errors_say_what_failed_the_tries_and_what_to_do(tmp_path: Path) -> None:
    """A refused connection: the host, the tries over how long, what to do; libcurl's
    code and words only under --debug."""
    url = f"http://127.0.0.1:{_closed_port()}/f.bin"
    done = bgt("get", url, "-o", "f.bin", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"bgtransfer: error: {url}: could not connect to 127.0.0.1 (tried 4")
    assert re.search(r"tried 4 times over \d+\.\d s\)", line)
    assert "check the address and the network" in line
    assert "curl" not in line
    assert " ms" not in line
    debug = bgt("get", url, "-o", "f.bin", "--debug", cwd=tmp_path, state=tmp_path / "s")
    assert debug.returncode == 1
    assert "(curl 7)" in debug.stderr


@pytest.mark.parametrize("prefix", ["", "zz"])
def test_an_unknown_or_empty_guid_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    """cancel with a prefix that names no operation: status 2 and one line."""
    done = bgt("cancel", prefix, cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1


def test_a_failed_mirror_file_is_kept_and_the_same_mirror_continues_it(
    body: bytes, tmp_path: Path
) -> None:
    """A mirror whose file fails midway exits 1 with the file listed as ERROR; the same
    mirror again continues that file from its partial data."""
    server = FaultServer(body)
    server.rate = 4 << 20
    state = tmp_path / "s"
    (tmp_path / "list.txt").write_text(f"{server.url} a.bin\n")
    command = ("mirror", "-q", "-i", "list.txt", "-d", "out", "-c", "1")
    try:
        proc = subprocess.Popen(
            argv(*command, "--state-dir", str(state)), cwd=tmp_path, stderr=subprocess.PIPE
        )
        wait_for(control_path(tmp_path / "out" / "a.bin").exists)
        server.fault = "404"
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert b"a.bin" in err
        assert b"404 Not Found" in err
        (row,) = listed(tmp_path, state)
        assert row[1] == "ERROR"
        (op,) = BackgroundDownloader(state_dir=state).get_failed_downloads()
        kept = op.progress.bytes_received
        assert kept > 0
        server.fault, server.rate = "", 0
        sent = server.bytes_sent
        done = bgt(*command, cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "a.bin").read_bytes() == body
        assert server.bytes_sent - sent <= len(body) - kept + (1 << 20)
    finally:
        server.close()
