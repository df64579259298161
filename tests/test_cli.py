"""The bgtransfer command in a subprocess, against real servers."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_run import argv, bgt
from mounts import tmpfs
from polling import wait_for
from servers import FaultServer, Nginx, free_port, sha256

from engine import BackgroundDownloader
from engine._disk.core import control_path


def test_get_downloads_byte_exact(nginx: Nginx, tmp_path: Path) -> None:
    """get URL -o FILE: exit 0, the file, its path on stdout, nothing else."""
    done = bgt("get", nginx.url("big.bin"), "-o", "out.bin", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out.bin") == sha256(nginx.www / "big.bin")
    assert done.stdout.strip() == str(tmp_path / "out.bin")
    assert done.stderr == ""  # not a terminal: no bar


def test_get_names_the_file_after_the_url(nginx: Nginx, tmp_path: Path) -> None:
    """Without -o the name comes from the URL; python -m engine is the same program."""
    done = bgt("get", nginx.url("small.bin"), "-q", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "small.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()


def test_get_into_a_folder_names_the_file_after_the_url(nginx: Nginx, tmp_path: Path) -> None:
    """-o naming a folder that exists puts the URL's name in it (as cp and aria2c's -d)."""
    (tmp_path / "into").mkdir()
    done = bgt("get", nginx.url("small.bin"), "-o", "into", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "into" / "small.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert done.stdout.strip() == str(tmp_path / "into" / "small.bin")


def test_get_resumes_after_sigkill(body: bytes, tmp_path: Path) -> None:
    """Killed mid-download, the same command again finishes it without starting over."""
    server = FaultServer(body)
    server.rate = 2 << 20
    state = tmp_path / "s"
    command = argv("get", server.url, "-o", "f.bin", "-c", "2", "-q")
    try:
        proc = subprocess.Popen([*command, "--state-dir", str(state)], cwd=tmp_path)
        wait_for(lambda: control_path(tmp_path / "f.bin").exists())
        time.sleep(0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent_before = server.bytes_sent
        assert 0 < sent_before < len(body)
        server.rate = 0
        done = bgt("get", server.url, "-o", "f.bin", "-c", "2", "-q", cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "f.bin").read_bytes() == body
        assert server.bytes_sent <= len(body) + 2 * (1 << 20)
        listed = bgt("list", cwd=tmp_path, state=state)
        assert listed.stdout == ""
    finally:
        server.close()


def test_checksum_match_and_mismatch(nginx: Nginx, tmp_path: Path) -> None:
    """--checksum: a match exits 0; a mismatch exits 1 and leaves no file under the name."""
    data = (nginx.www / "big.bin").read_bytes()
    right = hashlib.sha256(data).hexdigest()
    ok = bgt("get", nginx.url("big.bin"), "-o", "a", "--checksum", f"sha256={right}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    wrong = "0" * 64
    bad = bgt(
        "get",
        nginx.url("big.bin"),
        "-o",
        "b",
        "--checksum",
        f"sha256={wrong}",
        cwd=tmp_path,
        state=tmp_path / "s",
    )
    assert bad.returncode == 1
    assert "sha256" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    for algo in ("sha1", "md5", "xxh3", "xxh128"):
        digest = hashlib.new(algo).hexdigest() if algo in ("sha1", "md5") else None
        if digest is None:
            import xxhash

            digest = (xxhash.xxh3_64 if algo == "xxh3" else xxhash.xxh3_128)(data).hexdigest()
        else:
            digest = hashlib.new(algo, data).hexdigest()
        done = bgt(
            "get",
            nginx.url("big.bin"),
            "-o",
            algo,
            "--checksum",
            f"{algo}={digest}",
            cwd=tmp_path,
            state=tmp_path / "s",
        )
        assert done.returncode == 0, done.stderr


def test_checksum_of_a_small_file_held_in_memory(nginx: Nginx, tmp_path: Path) -> None:
    """A small body is kept in memory until it ends (no partial file holds it yet):
    its checksum is of those bytes, and a mismatch still leaves no file."""
    data = (nginx.www / "small.bin").read_bytes()
    right = hashlib.sha256(data).hexdigest()
    url = nginx.url("small.bin")
    state = tmp_path / "s"
    ok = bgt("get", url, "-o", "a", "--checksum", f"sha256={right}", cwd=tmp_path, state=state)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a").read_bytes() == data
    bad = bgt("get", url, "-o", "b", "--checksum", "md5=" + "0" * 32, cwd=tmp_path, state=state)
    assert bad.returncode == 1
    assert "md5" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "s"]


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["get"], 2, "required"),
        (["get", "http://x/", "-c", "0"], 2, "max_connections"),
        (["get", "http://x/", "--checksum", "sha256=zz"], 2, "checksum"),
        (["get", "http://x/", "-H", "NoColon"], 2, "header"),
        (["get", "ftp//nope"], 2, "URL"),
        (["frobnicate"], 2, "invalid choice"),
        (["resume"], 2, "GUID"),
        (["cancel", "0000"], 2, "no operation"),
        (["mirror", "-i", "missing.txt", "-d", "out"], 2, "missing.txt: No such file"),
        (["mirror", "-i", "missing.txt", "-d", "out", "-j", "0"], 2, "--parallel"),
        (["mirror", "-i", "missing.txt", "-d", "a-file"], 2, "a-file: not a directory"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(
    tmp_path: Path, args: list[str], status: int, words: str
) -> None:
    """Bad arguments: exit 2 and one clear line, no traceback."""
    (tmp_path / "a-file").touch()
    done = bgt(*args, cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == status, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_version_and_help(tmp_path: Path) -> None:
    """--version names the installed distribution; --help tells the exit statuses."""
    from importlib.metadata import version

    shown = bgt("--version", cwd=tmp_path)
    assert (shown.returncode, shown.stdout) == (0, f"bgtransfer {version('bgtransfer')}\n")
    helped = bgt("--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "exit status: 0 when every file is complete" in helped.stdout
    assert "``" not in helped.stdout  # no reST from a docstring


def test_not_found_and_unreachable_are_status_1(nginx: Nginx, tmp_path: Path) -> None:
    """A 404 and a refused connection: exit 1, one line each, --debug shows the traceback."""
    missing = bgt("get", nginx.url("nope"), "-o", "n", cwd=tmp_path, state=tmp_path / "s")
    assert missing.returncode == 1
    assert "404" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    port = free_port()
    gone = bgt("get", f"http://127.0.0.1:{port}/x", "-o", "u", cwd=tmp_path, state=tmp_path / "s")
    assert gone.returncode == 1
    assert "connect" in gone.stderr.lower()
    debug = bgt("get", nginx.url("nope"), "-o", "d", "--debug", cwd=tmp_path, state=tmp_path / "s")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert not (tmp_path / "n").exists()


def test_storage_errors_read_as_the_shell_tools_word_them(nginx: Nginx, tmp_path: Path) -> None:
    """A path that cannot be written, and a state directory that is a file: exit 1 and
    one line ``PATH: reason``, not Python's ``[Errno N] reason: 'PATH'``."""
    long_name = "n" * 300
    done = bgt("get", nginx.url("small.bin"), "-o", long_name, cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    assert done.stderr == f"bgtransfer: error: {tmp_path / long_name}: File name too long\n"
    (tmp_path / "f").touch()
    listed = bgt("list", cwd=tmp_path, state=tmp_path / "f")
    assert listed.returncode == 1
    assert listed.stderr == (
        f"bgtransfer: error: {tmp_path / 'f'}: state database unusable: not a directory\n"
    )


def test_login_from_the_url_or_user_stays_in_memory(body: bytes, tmp_path: Path) -> None:
    """get http://user:password@host/... logs in as curl would, -u USER:PASSWORD too;
    the password is never in the state database, and no line repeats it.  A mirror
    list whose URLs carry two different logins is bad usage."""
    server = FaultServer(body)
    server.auth = "user:s3cret pw"
    state = tmp_path / "s"
    with_login = server.url.replace("//", "//user:s3cret%20pw@")
    try:
        done = bgt("get", with_login, "-o", "a.bin", cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "a.bin").read_bytes() == body
        done = bgt(
            "get", server.url, "-u", "user:s3cret pw", "-o", "b.bin", cwd=tmp_path, state=state
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "b.bin").read_bytes() == body
        refused = bgt("get", server.url, "-o", "c.bin", cwd=tmp_path, state=state)
        assert refused.returncode == 1
        assert "401" in refused.stderr
        gone = f"http://user:s3cret@127.0.0.1:{free_port()}/f"  # refused: its line names it
        missing = bgt("get", gone, "-o", "d", cwd=tmp_path, state=state)
        assert missing.returncode == 1
        assert "127.0.0.1" in missing.stderr
        assert "s3cret" not in missing.stderr
        (tmp_path / "list.txt").write_text(
            f"{with_login} m1.bin\n{server.url.replace('//', '//other:pw@')} m2.bin\n"
        )
        two = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=state)
        assert two.returncode == 2
        assert "2 different logins" in two.stderr
        (tmp_path / "list.txt").write_text(f"{with_login} m1.bin\n{with_login} m2.bin\n")
        one = bgt("mirror", "-q", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=state)
        assert one.returncode == 0, one.stderr
        assert all((tmp_path / "out" / n).read_bytes() == body for n in ("m1.bin", "m2.bin"))
        for stored in state.glob("operations.sqlite3*"):
            assert b"s3cret" not in stored.read_bytes()
    finally:
        server.close()


def test_list_resume_cancel(body: bytes, tmp_path: Path) -> None:
    """list shows an interrupted operation; cancel removes it; resume --all finishes another."""
    server = FaultServer(body)
    server.rate = 1 << 20
    state = tmp_path / "s"
    try:
        for name in ("one.bin", "two.bin"):
            proc = subprocess.Popen(
                argv("get", server.url, "-o", name, "-q", "--state-dir", str(state)),
                cwd=tmp_path,
            )
            ctl = control_path(tmp_path / name)
            wait_for(ctl.exists)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        listed = bgt("list", cwd=tmp_path, state=state)
        header, *lines = listed.stdout.strip().splitlines()
        assert header.split() == ["ID", "STATUS", "SIZE", "DONE", "FILE", "URL", "REASON"]
        assert len(lines) == 2
        assert all("RUNNING" in line for line in lines)
        one = next(line.split()[0] for line in lines if "one.bin" in line)
        assert bgt("cancel", one, cwd=tmp_path, state=state).returncode == 0
        assert not control_path(tmp_path / "one.bin").exists()
        server.rate = 0
        done = bgt("resume", "--all", "-q", cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "two.bin").read_bytes() == body
        assert not (tmp_path / "one.bin").exists()
    finally:
        server.close()


def test_cancel_stops_a_get_running_in_another_shell(body: bytes, tmp_path: Path) -> None:
    """cancel GUID while a get of it runs in another process: that process cancels it
    and exits 1 with one line saying so; nothing is left, and list is empty."""
    server = FaultServer(body)
    server.rate = 1 << 20
    state = tmp_path / "s"
    try:
        proc = subprocess.Popen(
            argv("get", server.url, "-o", "f.bin", "-q", "--state-dir", str(state)),
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(control_path(tmp_path / "f.bin").exists)
        (_, line) = bgt("list", cwd=tmp_path, state=state).stdout.splitlines()
        done = bgt("cancel", line.split()[0], cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "canceled" in err
        assert "Traceback" not in err
        assert not (tmp_path / "f.bin").exists()
        assert not control_path(tmp_path / "f.bin").exists()
        assert bgt("list", cwd=tmp_path, state=state).stdout == ""
    finally:
        server.close()


def test_mirror_of_500_odd_names(nginx: Nginx, tmp_path: Path) -> None:
    """500 entries with spaces, unicode, leading dots and dashes (kept), and '..', '/',
    control characters and duplicates (bad lines, each told with its number): every
    good file inside the directory under its own name, byte-exact; a re-run skips all."""
    served = nginx.www / "mirror"
    served.mkdir(exist_ok=True)
    lines, expected = [], {}
    for i in range(50):
        name = f"file {i} ü.bin"
        (served / name).write_bytes(os.urandom(1000 + i))
        url = nginx.url("mirror/" + urllib.parse.quote(name))
        lines.append(url)  # name from the URL: spaces and unicode kept
        expected[name] = served / name
    odd = ["../up{}", "/abs/path{}", "a\x01b{}", "dup.bin", "-dash{}", ".hidden{}", "sp ace {}"]
    bad: list[int] = []  # line numbers
    kept: list[str] = []
    for i in range(450):
        name = odd[i % len(odd)].format(i)
        lines.append(f"{nginx.url('small.bin')} {name}")
        if i % len(odd) > 3 or (name == "dup.bin" and "dup.bin" not in kept):
            kept.append(name)
        else:
            bad.append(len(lines))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n# a comment\n\n")
    out = tmp_path / "out"
    done = bgt(
        "mirror", "-i", "list.txt", "-d", "out", "-j", "16", cwd=tmp_path, state=tmp_path / "s"
    )
    assert done.returncode == 1, done.stderr
    assert f"{50 + len(kept)} downloaded" in done.stderr
    told = re.findall(r"^bgtransfer: list.txt:(\d+): ", done.stderr, re.MULTILINE)
    assert [int(n) for n in told] == bad
    assert "list.txt:61: the name 'dup.bin' is already used by line 54" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, *kept])
    assert not list(tmp_path.glob("up*"))
    for name, source in expected.items():
        assert (out / name).read_bytes() == source.read_bytes()
    small = (nginx.www / "small.bin").read_bytes()
    assert all((out / n).read_bytes() == small for n in kept)
    again = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=tmp_path / "s")
    assert again.returncode == 1
    assert f"0 downloaded, {50 + len(kept)} already complete" in again.stderr


def test_mirror_killed_mid_run_never_leaves_a_partial_file_under_its_name(
    nginx: Nginx, tmp_path: Path
) -> None:
    """SIGKILL a mirror of 400 small files three times while files appear: whatever
    is under a final name is byte-exact every time, and the same command then
    completes the rest.  Small bodies end in memory and their files are made as they
    finish; some are past the 256 KiB kept in memory and spill to a partial file."""
    served = nginx.www / "killed"
    served.mkdir(exist_ok=True)
    names = [f"k{i:03d}.bin" for i in range(400)]
    for i, name in enumerate(names):
        size = 300_000 + i if i % 10 == 0 else 1 + 97 * i  # every tenth spills
        (served / name).write_bytes(os.urandom(size))
    (tmp_path / "list.txt").write_text("".join(nginx.url(f"killed/{n}") + "\n" for n in names))
    out, state = tmp_path / "out", tmp_path / "s"
    command = argv("mirror", "-q", "-i", "list.txt", "-d", "out", "-j", "16")
    command += ["--state-dir", str(state)]

    def finished() -> list[str]:
        return [n for n in names if (out / n).exists()]

    def killed_at(goal: int) -> None:
        proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(finished()) >= goal or proc.poll() is not None, timeout=60)
        finally:
            proc.kill()
            proc.wait()
        done = finished()
        assert len(done) < len(names), "the mirror ended before it could be killed"
        for name in done:
            assert (out / name).read_bytes() == (served / name).read_bytes(), name

    for goal in (40, 160, 300):
        killed_at(goal)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in names:
        assert (out / name).read_bytes() == (served / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == names  # no partial file left over


class _Terminal:
    """The command on a pty, as a user at a terminal runs it; ``seen`` is what it wrote."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.seen = b""
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: bgtransfer on the pty
            os.chdir(cwd)
            os.execv(sys.executable, argv(*args))

    def until(self, shown: Callable[[bytes], bool], seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not shown(self.seen):
            assert time.monotonic() < deadline, self.seen
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:  # the pty is gone with the process
                    raise AssertionError(f"the command ended: {self.seen!r}") from None

    def interrupt(self) -> int:
        """Ctrl-C; the exit status, once all it wrote is read."""
        os.kill(self.pid, signal.SIGINT)
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the pty is gone with the process
                break
            if not chunk:
                break
            self.seen += chunk
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_progress_bar_on_a_terminal_and_ctrl_c_pauses(body: bytes, tmp_path: Path) -> None:
    """On a pty the bar shows; Ctrl-C exits 130 and the same command then resumes."""
    server = FaultServer(body)
    server.rate = 1 << 20
    state = tmp_path / "s"
    try:
        term = _Terminal(
            tmp_path, "get", server.url, "-o", "t.bin", "-c", "2", "--state-dir", str(state)
        )
        term.until(lambda seen: b"MB" in seen or b"kB" in seen)
        assert b"t.bin" in term.seen
        assert term.interrupt() == 130
        assert b"run the same command again" in term.seen
        server.rate = 0
        done = bgt("get", server.url, "-o", "t.bin", "-q", cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "t.bin").read_bytes() == body
    finally:
        server.close()


def test_mirror_on_a_terminal_counts_the_files_done(
    nginx: Nginx, body: bytes, tmp_path: Path
) -> None:
    """On a pty the mirror's total bar counts the files done while others still run
    (the one already complete counts from the start), and shows the total size once
    every file's is known."""
    server = FaultServer(body)
    server.rate = 256 << 10  # the third file takes its time
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "there.bin").write_bytes(b"complete before the command")
    (tmp_path / "list.txt").write_text(
        f"{nginx.url('big.bin')} a.bin\n{nginx.url('small.bin')} there.bin\n"
        f"{nginx.url('empty.bin')} b.bin\n{server.url} slow.bin\n"
    )
    state = tmp_path / "s"
    try:
        term = _Terminal(
            tmp_path, "mirror", "-i", "list.txt", "-d", "out", "--state-dir", str(state)
        )
        term.until(lambda seen: b"3/4 done" in seen)
        assert b"1/4 done" in term.seen  # before the others ended: the skipped one
        total = (nginx.www / "big.bin").stat().st_size + len(body)
        term.until(lambda seen: f"/{total / 1e6:.1f} MB".encode() in seen)
        assert b"failed" not in term.seen  # a file whose size is known is not ended
        assert not (tmp_path / "out" / "slow.bin").exists()  # counted while it ran
        assert term.interrupt() == 130
    finally:
        server.close()


def test_mirror_ctrl_c_pauses_and_the_same_command_resumes(body: bytes, tmp_path: Path) -> None:
    """SIGINT during a mirror: exit 130, every running download paused with its data;
    running the same command again completes them all, byte-exact."""
    server = FaultServer(body)
    server.rate = 1 << 20
    state = tmp_path / "s"
    names = [f"m{i}.bin" for i in range(4)]
    (tmp_path / "list.txt").write_text("".join(f"{server.url} {n}\n" for n in names))
    command = ("mirror", "-q", "-i", "list.txt", "-d", "out", "-j", "4", "-c", "1")
    try:
        proc = subprocess.Popen(
            argv(*command, "--state-dir", str(state)), cwd=tmp_path, stderr=subprocess.PIPE
        )
        wait_for(lambda: all(control_path(tmp_path / "out" / n).exists() for n in names))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        listed = bgt("list", cwd=tmp_path, state=state).stdout.splitlines()[1:]
        assert len(listed) == 4
        assert all("PAUSED_BY_APPLICATION" in line for line in listed), listed
        assert not any((tmp_path / "out" / n).exists() for n in names)
        server.rate = 0
        done = bgt(*command, cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert all((tmp_path / "out" / n).read_bytes() == body for n in names)
    finally:
        server.close()


def test_mirror_continues_a_file_from_its_new_url(body: bytes, tmp_path: Path) -> None:
    """A list whose URL for a file changed since its download began (a re-signed URL):
    the same content (its ETag) continues from the new URL without starting over."""
    server = FaultServer(body)
    server.rate = 1 << 20
    state = tmp_path / "s"
    (tmp_path / "list.txt").write_text(f"{server.url} a.bin\n")
    command = ("mirror", "-q", "-i", "list.txt", "-d", "out", "-c", "1")
    try:
        proc = subprocess.Popen(argv(*command, "--state-dir", str(state)), cwd=tmp_path)
        wait_for(control_path(tmp_path / "out" / "a.bin").exists)
        wait_for(lambda: server.bytes_sent > 3 << 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        (op,) = BackgroundDownloader(state_dir=state).get_current_downloads()
        kept = op.progress.bytes_received
        assert kept >= 2 << 20
        server.rate = 0
        sent = server.bytes_sent
        # b.bin from a server of its own: a new large file's first request is cut off
        # once its size shows, and what that server wrote before is no part of a.bin's
        other = FaultServer(body)
        try:
            (tmp_path / "list.txt").write_text(f"{server.url}?v=2 a.bin\n{other.url} b.bin\n")
            done = bgt(*command, cwd=tmp_path, state=state)
        finally:
            other.close()
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "a.bin").read_bytes() == body
        assert (tmp_path / "out" / "b.bin").read_bytes() == body
        assert server.bytes_sent - sent <= len(body) - kept + (1 << 20)  # a.bin went on
    finally:
        server.close()


def test_mirror_refuses_a_new_url_for_data_without_a_validator(body: bytes, tmp_path: Path) -> None:
    """Partial data with no ETag or Last-Modified cannot show that a new URL serves the
    same content: that file fails with a line saying so, the others complete, status 1;
    the partial data is left as it was."""
    server = FaultServer(body)
    server.etag = server.last_modified = ""
    server.rate = 1 << 20
    state = tmp_path / "s"
    (tmp_path / "list.txt").write_text(f"{server.url} a.bin\n")
    command = ("mirror", "-q", "-i", "list.txt", "-d", "out", "-c", "1")
    try:
        proc = subprocess.Popen(argv(*command, "--state-dir", str(state)), cwd=tmp_path)
        wait_for(control_path(tmp_path / "out" / "a.bin").exists)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        server.rate = 0
        (tmp_path / "list.txt").write_text(f"{server.url}?v=2 a.bin\n{server.url} b.bin\n")
        done = bgt(*command, cwd=tmp_path, state=state)
        assert done.returncode == 1
        guid = bgt("list", cwd=tmp_path, state=state).stdout.splitlines()[1].split()[0]
        assert f"out/a.bin is being downloaded from {server.url}, and its partial" in done.stderr
        assert f"(bgtransfer cancel {guid} first)" in done.stderr
        assert (tmp_path / "out" / "b.bin").read_bytes() == body
        assert control_path(tmp_path / "out" / "a.bin").exists()
        assert not (tmp_path / "out" / "a.bin").exists()
    finally:
        server.close()


def _stderr_until(proc: subprocess.Popen[bytes], marker: bytes, seconds: float) -> bytes:
    """What ``proc`` wrote to stderr until ``marker`` appeared (or ``seconds`` passed)."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.parametrize("command", ["get", "mirror"])
def test_a_wait_for_disk_space_is_told_even_when_quiet(
    nginx: Nginx, tmp_path: Path, command: str
) -> None:
    """A disk under the free-space reserve (64 MiB; this tmpfs has 16): the downloads
    wait in PAUSED_SYSTEM_POLICY, and the command says so in one line, -q or not,
    instead of waiting without a word; Ctrl-C still pauses (status 130)."""
    with tmpfs(tmp_path / "disk", "16m") as disk:
        if command == "get":
            args = ["get", nginx.url("big.bin"), "-o", str(disk / "f.bin"), "-q"]
        else:
            names = ["small.bin", "big.bin", "empty.bin"]
            (tmp_path / "list.txt").write_text("".join(nginx.url(n) + "\n" for n in names))
            args = ["mirror", "-i", str(tmp_path / "list.txt"), "-d", str(disk), "-q"]
        proc = subprocess.Popen(
            argv(*args, "--state-dir", str(tmp_path / "s")), cwd=tmp_path, stderr=subprocess.PIPE
        )
        try:
            told = _stderr_until(proc, b"kept free", 20)
            proc.send_signal(signal.SIGINT)
            rest = proc.communicate(timeout=30)[1]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = (told + rest).decode().splitlines()
    waiting = [line for line in lines if "waiting for free disk space" in line]
    assert len(waiting) == 1, lines  # one line for the folder, not one a file
    assert f"in {disk} (" in waiting[0]
    assert "MiB free, 64 MiB kept free" in waiting[0]
    assert proc.returncode == 130


@pytest.mark.parametrize(
    ("command", "signum"),
    [("get", signal.SIGTERM), ("mirror", signal.SIGHUP)],
    ids=["get", "mirror"],
)
def test_sigterm_and_sighup_pause_like_ctrl_c(
    body: bytes, tmp_path: Path, command: str, signum: signal.Signals
) -> None:
    """A service stopped (SIGTERM) or a terminal gone (SIGHUP) pauses the downloads as
    Ctrl-C does: exit 128 + the signal, PAUSED_BY_APPLICATION in the state directory,
    and the same command then finishes without starting over."""
    server = FaultServer(body)
    server.rate = 2 << 20
    state = tmp_path / "s"
    if command == "get":
        args = ["get", server.url, "-o", "f.bin", "-c", "2", "-q"]
    else:
        (tmp_path / "list.txt").write_text(f"{server.url} f.bin\n")
        args = ["mirror", "-i", "list.txt", "-d", ".", "-c", "2", "-q"]
    try:
        proc = subprocess.Popen(
            argv(*args, "--state-dir", str(state)), cwd=tmp_path, stderr=subprocess.PIPE
        )
        wait_for(lambda: control_path(tmp_path / "f.bin").exists())
        time.sleep(0.5)
        proc.send_signal(signum)
        err = proc.communicate(timeout=30)[1].decode()
        assert proc.returncode == 128 + signum, err
        assert f"{signum.name}; run the same command again to resume" in err
        listed = bgt("list", cwd=tmp_path, state=state)
        assert "PAUSED_BY_APPLICATION" in listed.stdout
        sent_before = server.bytes_sent
        assert 0 < sent_before < len(body)
        server.rate = 0
        done = bgt(*args, cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "f.bin").read_bytes() == body
        assert server.bytes_sent <= len(body) + 2 * (1 << 20)
    finally:
        server.close()


def test_output_cut_short_ends_quietly(nginx: Nginx, tmp_path: Path) -> None:
    """``bgtransfer list | head -1``: the reader goes away, the command ends as SIGPIPE
    ends ``ls`` (status 141, not a word), not with "error: Broken pipe" and status 1;
    and ``get URL | true`` still leaves the file complete."""
    state = tmp_path / "s"
    d = BackgroundDownloader(state_dir=state)
    for i in range(400):  # more lines than a pipe holds: the write fails at once
        d.create_download(nginx.url("small.bin"), tmp_path / f"waiting-{i:03d}.bin")
    for args in (["list"], ["get", nginx.url("small.bin"), "-o", "got.bin"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written
        try:
            done = subprocess.run(
                argv(*args, "--state-dir", str(state)),
                cwd=tmp_path,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, ""), args
    assert (tmp_path / "got.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()
