"""Bulk jobs: ``mirror`` and ``BackgroundDownloader.create_downloads`` (small files over
the lean path, large ones promoted to full operations), against nginx and the fault
server."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import argv, bgt
from polling import wait_for
from servers import FaultHandler, FaultServer, Nginx

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    BulkEntry,
    IntegrityError,
    TransferConfig,
    TransportError,
    WebErrorStatus,
)
from engine._bulk.lean import LEAN_LEAST, LEAN_MEMORY, lean_limit

S = BackgroundTransferStatus
_GET = re.compile(r'"GET (\S+) HTTP')
_SENT_BIG = re.compile(r'"GET /promoted/big.bin HTTP/[^"]*" 20[06] (\d+)')


def _gets(nginx: Nginx, since: int) -> collections.Counter[str]:
    """Requests per path in nginx's access log after byte ``since``."""
    with (nginx.root / "access.log").open() as fh:
        fh.seek(since)
        return collections.Counter(_GET.findall(fh.read()))


def _log_size(nginx: Nginx) -> int:
    return (nginx.root / "access.log").stat().st_size


def test_mirror_killed_in_a_5000_file_run_fetches_no_complete_file_twice(
    nginx: Nginx, tmp_path: Path
) -> None:
    """SIGKILL a mirror of 5000 small files mid-run, run it again: exit 0, every file
    byte-exact, no file complete at the kill requested again, no partial file left."""
    served = nginx.www / "bulk5000"
    served.mkdir(exist_ok=True)
    names = [f"b{i:04d}.bin" for i in range(5000)]
    for i, name in enumerate(names):
        (served / name).write_bytes(os.urandom(4096 - i % 7))
    (tmp_path / "list.txt").write_text("".join(nginx.url(f"bulk5000/{n}") + "\n" for n in names))
    out, state = tmp_path / "out", tmp_path / "s"
    command = argv("mirror", "-q", "-i", "list.txt", "-d", "out", "-j", "16")
    command += ["--state-dir", str(state)]
    start = _log_size(nginx)
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out.exists() and len(os.listdir(out)) >= 1500) or proc.poll() is not None)
    finally:
        proc.kill()
        proc.wait()
    complete = set(os.listdir(out)) & set(names)
    assert len(complete) < len(names), "the mirror ended before it could be killed"
    for name in complete:
        assert (out / name).read_bytes() == (served / name).read_bytes(), name
    job = BackgroundDownloader(state_dir=state).create_downloads((), job=f"mirror:{out}")
    listed = job.files()  # the killed run's rows: files it read, each with its state
    assert listed
    assert {f.result_file.name for f in listed if f.status is S.COMPLETED} <= complete
    before = _gets(nginx, start)
    again = _log_size(nginx)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{len(complete)} already complete" in result.stderr
    for name in names:
        assert (out / name).read_bytes() == (served / name).read_bytes(), name
    assert sorted(os.listdir(out)) == names  # no partial file under any name
    rerun = _gets(nginx, again)
    for name in complete:
        path = f"/bulk5000/{name}"
        assert before[path] == 1, name
        assert rerun[path] == 0, name
    assert all(count == 1 for count in rerun.values())
    assert job.files() == []  # all complete: the job's rows are forgotten


def test_a_large_file_of_a_mirror_is_promoted_to_ranged_requests(
    nginx: Nginx, tmp_path: Path
) -> None:
    """A file past the first request (4 MiB) among small ones becomes a full operation:
    byte-exact, fetched over ranges (206s in nginx's log), the small ones beside it;
    the first request's bytes are its first range, not fetched twice."""
    served = nginx.www / "promoted"
    served.mkdir(exist_ok=True)
    big = os.urandom(9 << 20)
    (served / "big.bin").write_bytes(big)
    small = {f"s{i}.bin": os.urandom(5000 + i) for i in range(20)}
    for name, data in small.items():
        (served / name).write_bytes(data)
    lines = [nginx.url("promoted/big.bin")] + [nginx.url(f"promoted/{n}") for n in small]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    proto = (nginx.root / "proto.log").stat().st_size
    start = _log_size(nginx)
    done = bgt(
        "mirror", "-q", "-i", "list.txt", "-d", "out", "-c", "4", cwd=tmp_path, state=tmp_path / "s"
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
    for name, data in small.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    with (nginx.root / "proto.log").open() as fh:
        fh.seek(proto)
        ranged = [
            ln for ln in fh.read().splitlines() if "/promoted/big.bin" in ln and " 206 " in ln
        ]
    assert len(ranged) >= 2
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["big.bin", *small])
    with (nginx.root / "access.log").open() as fh:
        fh.seek(start)
        sent = [int(m) for m in _SENT_BIG.findall(fh.read())]
    # the small-file request's 4 MiB were kept as the first range, not fetched again
    # (a slow request's last bytes raced by another may come twice: less than a MiB)
    assert len(big) <= sum(sent) < len(big) + (1 << 20)


def test_lean_ranges_shrink_as_more_files_run_at_once() -> None:
    """The small files in flight hold their bodies in memory: at most LEAN_MEMORY in
    all, each never less than LEAN_LEAST, never more than the first request."""
    four = 4 << 20
    assert lean_limit(four, 16) == four
    assert lean_limit(four, 64) == LEAN_MEMORY // 64
    assert lean_limit(four, 100) == 512 << 10  # a power of two: whole blocks of a bitmap
    assert lean_limit(four, 10_000) == LEAN_LEAST
    assert lean_limit(100_000, 10_000) == 100_000  # a first request set below both
    for parallel in (1, 7, 64, 300):
        assert lean_limit(four, parallel) * parallel <= max(LEAN_MEMORY, LEAN_LEAST * parallel)


def test_a_mirror_of_many_large_files_asks_each_for_its_share(nginx: Nginx, tmp_path: Path) -> None:
    """At -j 128 each file's first request is its share of LEAN_MEMORY (512 KiB), not
    the first request's 4 MiB: a large file is promoted after that much, keeps it as
    its first range, and no byte is served twice."""
    served = nginx.www / "shares"
    served.mkdir()
    bodies = {f"b{i}.bin": os.urandom((2 << 20) + i) for i in range(8)}
    bodies.update({f"s{i}.bin": os.urandom(3000 + i) for i in range(20)})
    for name, data in bodies.items():
        (served / name).write_bytes(data)
    (tmp_path / "list.txt").write_text("".join(f"{nginx.url(f'shares/{n}')}\n" for n in bodies))
    done = bgt("mirror", "-q", "-i", "list.txt", "-d", "out", "-j", "128", cwd=tmp_path,
               state=tmp_path / "s")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, data in bodies.items():
        assert (tmp_path / "out" / name).read_bytes() == data, name
    sent: dict[str, list[int]] = collections.defaultdict(list)
    for line in (nginx.root / "timed.log").read_text().splitlines():
        _, _, size, uri = line.split()
        if uri.startswith("/shares/"):
            sent[uri.rpartition("/")[2]].append(int(size))
    share = LEAN_MEMORY // 128
    for name, data in bodies.items():
        assert sum(sent[name]) == len(data), name
        if len(data) > share:
            assert share in sent[name], (name, sent[name])
            assert len(sent[name]) >= 2, (name, sent[name])
        else:
            assert sent[name] == [len(data)], name


_LIES = {
    # a 206 that is not the range asked for (bytes=0-...), or disagrees with itself
    "wrongstart": ("bytes 5-104/3000", "100", 100),
    "pasttotal": ("bytes 0-99/50", "100", 100),
    "framing": ("bytes 0-99/100", "50", 50),
    "norange": (None, "100", 100),
    "cut": ("bytes 0-99/100", None, 60),
}


def _liar(handler: FaultHandler, send_body: bool) -> bool:
    """Lies by path: a short body, 206s that are not the range asked for; else the truth."""
    path = handler.path
    if path.startswith("/file.bin?short"):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 500)
        handler.close_connection = True
        return True
    lie = _LIES.get(path.partition("?")[2])
    if lie is not None:
        content_range, length, sent = lie
        handler.send_response(206)
        if content_range is not None:
            handler.send_header("Content-Range", content_range)
        if length is not None:
            handler.send_header("Content-Length", length)
        handler.end_headers()
        handler.wfile.write(b"y" * sent)
        handler.close_connection = length is None
        return True
    return False


@pytest.fixture
def liar() -> Iterator[FaultServer]:
    server = FaultServer(os.urandom(3000))
    server.script = _liar
    try:
        yield server
    finally:
        server.close()


def test_lying_responses_fail_their_file_only_with_typed_errors(
    liar: FaultServer, tmp_path: Path
) -> None:
    """A short body, 206s that are not the range asked for (wrong start, past their
    total, two lengths, no Content-Range, a body shorter than its range) and a
    checksum mismatch each fail their file with its typed error; the other files of
    the job complete, nothing partial stays."""
    out = tmp_path / "out"
    out.mkdir()
    wrong = "sha256=" + "0" * 64
    right = "sha256=" + hashlib.sha256(liar.body).hexdigest()
    entries = [
        BulkEntry(f"{liar.url}?short", out / "short.bin"),
        *(BulkEntry(f"{liar.url}?{lie}", out / f"{lie}.bin") for lie in _LIES),
        BulkEntry(f"{liar.url}?sum", out / "sum.bin", wrong),
        BulkEntry(f"{liar.url}?good", out / "good.bin", right),
        BulkEntry(f"{liar.url}?plain", out / "plain.bin"),
    ]
    config = TransferConfig(backoff_base=0.01, backoff_max=0.05)
    d = BackgroundDownloader(state_dir=tmp_path / "s", config=config)
    result = d.create_downloads(entries, parallel=4).run()
    failed = {os.path.basename(f.result_file): f.error for f in result.failed}
    assert sorted(failed) == sorted(["short.bin", "sum.bin", *(f"{lie}.bin" for lie in _LIES)])
    assert isinstance(failed["short.bin"], TransportError)
    assert failed["short.bin"].attempts == config.retries + 1
    for lie in _LIES:
        error = failed[f"{lie}.bin"]
        assert isinstance(error, TransportError), lie
        assert error.web_error_status is WebErrorStatus.ERROR_HTTP_INVALID_SERVER_RESPONSE, lie
    assert isinstance(failed["sum.bin"], IntegrityError)
    assert result.downloaded == 2
    assert sorted(os.listdir(out)) == ["good.bin", "plain.bin"]
    assert (out / "good.bin").read_bytes() == liar.body
    assert (out / "plain.bin").read_bytes() == liar.body


def test_a_mirror_with_a_lying_server_exits_1_and_mirrors_the_rest(
    liar: FaultServer, nginx: Nginx, tmp_path: Path
) -> None:
    """mirror: the lying files are reported by name, exit status 1, every other file
    of the list mirrored byte-exact."""
    (nginx.www / "honest.bin").write_bytes(b"honest" * 1000)
    (tmp_path / "list.txt").write_text(
        f"{liar.url}?wrongstart partial.bin\n{nginx.url('honest.bin')}\n"
        f"{liar.url}?x sum.bin sha256={'1' * 64}\n"
    )
    done = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    assert "partial.bin" in done.stderr
    assert "sum.bin" in done.stderr
    assert "1 downloaded" in done.stderr
    assert "2 failed" in done.stderr
    assert os.listdir(tmp_path / "out") == ["honest.bin"]


def test_one_file_of_a_bulk_job_is_cancelled_on_its_own(tmp_path: Path) -> None:
    """cancel() of a file in flight stops it alone (CANCELED, no file); a file
    cancelled before it was reached is never requested; the rest complete."""
    release = threading.Event()
    server = FaultServer(os.urandom(2000))
    seen: list[str] = []

    def held(handler: FaultHandler, send_body: bool) -> bool:
        seen.append(handler.path)
        if handler.path.endswith("?held"):
            release.wait(30)
            handler.close_connection = True
            return True
        return False

    server.script = held
    out = tmp_path / "out"
    out.mkdir()
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    entries = [BulkEntry(f"{server.url}?held", out / "held.bin")]
    entries += [BulkEntry(f"{server.url}?{i}", out / f"f{i}.bin") for i in range(10)]
    entries.append(BulkEntry(f"{server.url}?never", out / "never.bin"))
    bulk = d.create_downloads(entries, parallel=2, job="cancel-one")
    results = []
    runner = threading.Thread(target=lambda: results.append(bulk.run()))
    try:
        bulk.cancel(out / "never.bin")
        runner.start()
        wait_for(lambda: "/file.bin?held" in seen)
        bulk.cancel(out / "held.bin")
        runner.join(30)
    finally:
        release.set()
        server.close()
    assert not runner.is_alive()
    (result,) = results
    assert result.downloaded == 10
    assert result.canceled == 2
    assert not result.failed
    assert "/file.bin?never" not in seen
    states = {f.result_file.name: f.status for f in bulk.files()}
    assert states["held.bin"] is S.CANCELED
    assert states["never.bin"] is S.CANCELED
    assert all(states[f"f{i}.bin"] is S.COMPLETED for i in range(10))
    assert sorted(os.listdir(out)) == sorted(f"f{i}.bin" for i in range(10))


def test_a_file_of_a_bulk_job_can_become_a_full_operation(nginx: Nginx, tmp_path: Path) -> None:
    """operation() gives one file of a job a full DownloadOperation: the job's run lets
    it go on, and its row names the operation's guid."""
    (nginx.www / "op1.bin").write_bytes(b"a" * 7000)
    (nginx.www / "op2.bin").write_bytes(b"b" * 7000)
    out = tmp_path / "out"
    out.mkdir()
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    entries = [BulkEntry(nginx.url(f"op{i}.bin"), out / f"op{i}.bin") for i in (1, 2)]
    bulk = d.create_downloads(entries, job="full-one")
    first = bulk.run()  # rows written; then make one a full operation and run again
    assert first.downloaded == 2
    (out / "op1.bin").unlink()
    op = bulk.operation(out / "op1.bin")
    assert op.status is S.IDLE
    again = bulk.run()
    assert again.downloaded == 1
    assert again.skipped == 1
    assert op.progress.status is S.COMPLETED
    assert (out / "op1.bin").read_bytes() == b"a" * 7000
    rows = {f.result_file.name: f for f in bulk.files()}
    assert rows["op1.bin"].guid == op.guid
    assert rows["op1.bin"].status is S.COMPLETED
    assert rows["op2.bin"].status is S.COMPLETED
    assert rows["op2.bin"].size == 7000


def test_a_bulk_job_reads_its_entries_lazily(nginx: Nginx, tmp_path: Path) -> None:
    """The entries are pulled as files finish: the first file is written before the
    iterable has been read past a few entries more than the parallel count."""
    (nginx.www / "lazy.bin").write_bytes(b"z" * 3000)
    out = tmp_path / "out"
    out.mkdir()
    pulled = [0]
    first_done_at: list[int] = []

    def entries() -> Iterator[BulkEntry]:
        for i in range(100_000):
            if not first_done_at and (out / "l0.bin").exists():
                first_done_at.append(pulled[0])
            pulled[0] += 1
            if i == 200:
                return
            yield BulkEntry(nginx.url("lazy.bin"), out / f"l{i}.bin")

    d = BackgroundDownloader(state_dir=tmp_path / "s")
    result = d.create_downloads(entries(), parallel=4).run()
    assert result.downloaded == 200
    assert first_done_at
    assert first_done_at[0] < 100


def test_a_long_list_is_mirrored_as_it_is_read(tmp_path: Path) -> None:
    """A list over 1 MiB is streamed: with -j 1, its first file is requested before
    the list's last line (a bad one, told as it is read) has been read."""
    release = threading.Event()
    server = FaultServer(os.urandom(1000))
    seen: list[str] = []

    def hold_first(handler: FaultHandler, send_body: bool) -> bool:
        seen.append(handler.path)
        if handler.path.endswith("?first"):
            release.wait(60)
        return False

    server.script = hold_first
    padding = "# padding\n" * 120_000  # 1.2 MB of comments between the two lines
    (tmp_path / "list.txt").write_text(
        f"{server.url}?first first.bin\n{padding}{server.url}?second second.bin\nnot-a-url\n"
    )
    err = (tmp_path / "err.txt").open("w")
    command = argv("mirror", "-q", "-i", "list.txt", "-d", "out", "-j", "1")
    proc = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path / "s")], cwd=tmp_path, stderr=err
    )
    try:
        wait_for(lambda: "/file.bin?first" in seen)
        told_before = (tmp_path / "err.txt").read_text()
    finally:
        release.set()
        assert proc.wait(60) == 1  # the bad line
        err.close()
        server.close()
    assert "not-a-url" not in told_before
    assert "list.txt:120003" in (tmp_path / "err.txt").read_text()
    assert (tmp_path / "out" / "first.bin").read_bytes() == server.body
    assert (tmp_path / "out" / "second.bin").read_bytes() == server.body


def test_a_streamed_list_keeps_one_login_a_command(nginx: Nginx, tmp_path: Path) -> None:
    """From standard input (streamed), the first line's login is the command's: a
    later line whose URL carries another is a bad line, the rest are mirrored."""
    (nginx.www / "login1.bin").write_bytes(b"one" * 100)
    (nginx.www / "login2.bin").write_bytes(b"two" * 100)
    base = nginx.url("").removeprefix("http://")
    listed = f"http://u:p@{base}login1.bin\nhttp://v:q@{base}login2.bin\n{nginx.url('small.bin')}\n"
    done = subprocess.run(
        [*argv("mirror", "-q", "-i", "-", "-d", "out"), "--state-dir", str(tmp_path / "s")],
        cwd=tmp_path,
        input=listed,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "-:2: its URL carries a login other than the first line's" in done.stderr
    assert "q@" not in done.stderr  # the password is never told
    assert sorted(os.listdir(tmp_path / "out")) == ["login1.bin", "small.bin"]


def test_a_second_run_of_a_mirror_in_progress_is_refused(tmp_path: Path) -> None:
    """The same mirror started again while one runs (same folder and state) is
    refused with a word: two runs would race on the same partial files."""
    release = threading.Event()
    server = FaultServer(os.urandom(1000))
    seen: list[str] = []

    def hold(handler: FaultHandler, send_body: bool) -> bool:
        seen.append(handler.path)
        release.wait(60)
        return False

    server.script = hold
    (tmp_path / "list.txt").write_text(f"{server.url}?a a.bin\n{server.url}?b b.bin\n")
    command = [*argv("mirror", "-q", "-i", "list.txt", "-d", "out"), "--state-dir", "s"]
    first = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(seen) >= 1)
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        release.set()
        _, err = first.communicate(timeout=60)
        server.close()
    assert second.returncode != 0
    assert "is running in another process" in second.stderr
    assert first.returncode == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["a.bin", "b.bin"]


def test_a_list_that_fails_mid_run_ends_the_run_with_its_error(
    nginx: Nginx, tmp_path: Path
) -> None:
    """An entries iterable that raises ends the run with that error (no hang), and
    leaves only complete files under their names."""
    (nginx.www / "midrun.bin").write_bytes(b"m" * 5000)
    out = tmp_path / "out"
    out.mkdir()

    def entries() -> Iterator[BulkEntry]:
        for i in range(50):
            yield BulkEntry(nginx.url("midrun.bin"), out / f"m{i}.bin")
        raise ValueError("the list broke off")

    d = BackgroundDownloader(state_dir=tmp_path / "s")
    with pytest.raises(ValueError, match="the list broke off"):
        d.create_downloads(entries(), parallel=4).run()
    for name in os.listdir(out):
        assert name.endswith(".bin")
        assert (out / name).read_bytes() == b"m" * 5000
