"""Persistence: operations outlive their process; a SIGKILL never costs more than a block."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer, Nginx

import engine._ops.cross_process
from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    DownloadOperation,
    ResultFileInUseError,
)
from engine._disk.core import control_path, part_path
from engine._state import store as _store
from engine._state.store import Store

S = BackgroundTransferStatus
CHILD = str(Path(__file__).with_name("attach_child.py"))
BLOCK = 1 << 16
CONNECTIONS = 4


def _child(state: Path, *args: str) -> subprocess.Popen[str]:
    """The child, its output to a file beside the state (no pipe left open after a kill)."""
    with (state.parent / "child.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, CHILD, str(state), *args], stdout=log, stderr=log, text=True
        )


def _child_underway(state: Path, server: FaultServer, result: Path) -> subprocess.Popen[str]:
    """A child downloading ``server.url`` to ``result``, once its data flows."""
    proc = _child(state, "create", server.url, str(result))
    deadline = time.monotonic() + 30
    while not control_path(result).exists():
        assert time.monotonic() < deadline, "the child never started writing"
        time.sleep(0.01)
    return proc


def _kill_when_underway(proc: subprocess.Popen[str], result: Path, rng: random.Random) -> bool:
    """SIGKILL at a random moment once data flows; False when the child finished first."""
    deadline = time.monotonic() + 30
    while not control_path(result).exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the child never started writing"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.05, 0.4))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_sigkill_and_reattach_five_times(tmp_path: Path) -> None:
    """Killed at random moments, re-attached from a new process each time: byte-exact, and
    the server sends at most the file plus, per kill and connection, a block and the
    server's last write (64 KiB): what the killed process had received of them."""
    body = random.Random(7).randbytes(24 << 20)
    server = FaultServer(body)
    server.rate = 2 << 20  # per connection: the download spans several kills
    state, result = tmp_path / "state", tmp_path / "out.bin"
    rng = random.Random(11)
    try:
        kills = 0
        proc = _child(state, "create", server.url, str(result))
        while kills < 5:
            if not _kill_when_underway(proc, result, rng):
                break
            kills += 1
            assert not result.exists()
            found = BackgroundDownloader(state_dir=state).get_current_downloads()
            assert len(found) == 1
            assert found[0].status is S.RUNNING
            proc = _child(state, "attach")
        proc.wait(120)
        log = (tmp_path / "child.log").read_text()
        assert proc.returncode == 0, log
        assert kills == 5
        assert result.read_bytes() == body
        assert not part_path(result).exists()
        assert not control_path(result).exists()
        assert server.bytes_sent <= len(body) + kills * CONNECTIONS * (BLOCK + (64 << 10))
        assert BackgroundDownloader(state_dir=state).get_current_downloads() == []
    finally:
        server.close()


def test_get_current_downloads_from_a_new_process_lists_unfinished(
    tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader]
) -> None:
    """Created and paused here, found in another process with its settings intact."""
    d = make_downloader()
    d.set_request_header("X-Kept", "yes")
    op = d.create_download("http://127.0.0.1:9/never", tmp_path / "later.bin")
    code = (
        "import sys; from engine import BackgroundDownloader as B; "
        "ops = B(state_dir=sys.argv[1]).get_current_downloads(); "
        "print(len(ops), ops[0].guid, ops[0].status.name, ops[0].requested_uri, "
        "ops[0].result_file)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,  # not the source tree: the installed package, with its compiled core
    ).stdout.split()
    assert out == [
        "1",
        str(op.guid),
        "IDLE",
        "http://127.0.0.1:9/never",
        str(tmp_path / "later.bin"),
    ]


@pytest.mark.parametrize("rowid", [False, True])
def test_a_state_database_with_either_table_works(
    nginx: Nginx, tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader], rowid: bool
) -> None:
    """A new database keys operations by guid alone (WITHOUT ROWID); one made before,
    with a rowid table, goes on working: found, downloaded, and gone once complete."""
    db = tmp_path / "state" / "operations.sqlite3"
    if rowid:  # the schema as it was
        db.parent.mkdir(mode=0o700)
        with sqlite3.connect(db) as conn:
            conn.executescript(_store._SCHEMA.replace(") WITHOUT ROWID;", ");"))
    d = make_downloader()
    op = d.create_download(nginx.url("small.bin"), tmp_path / "s.bin")
    assert [o.guid for o in d.get_current_downloads()] == [op.guid]
    op.start()
    op.wait(30)
    assert (tmp_path / "s.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert d.get_current_downloads() == []
    with sqlite3.connect(db) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'operations'").fetchone()
    assert ("WITHOUT ROWID" in sql) is not rowid


def test_state_files_are_owner_only(
    tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader]
) -> None:
    """The state directory is 0700 and the database 0600."""
    d = make_downloader()
    d.create_download("http://127.0.0.1:9/x", tmp_path / "x")
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "state").glob("operations.sqlite3*"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_one_process_at_a_time_drives_an_operation(tmp_path: Path) -> None:
    """While a live process runs an operation, another cannot attach or pause it
    (ResultFileInUseError); once that process is gone, it can."""
    body = random.Random(9).randbytes(8 << 20)
    server = FaultServer(body)
    server.rate = 1 << 20
    state, result = tmp_path / "state", tmp_path / "out.bin"
    try:
        proc = _child_underway(state, server, result)
        (op,) = BackgroundDownloader(state_dir=state).get_current_downloads()
        for call in (op.attach, op.pause):
            with pytest.raises(ResultFileInUseError, match="another process"):
                call()
        assert control_path(result).exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.rate = 0
        op.attach()
        op.wait(60)
        assert result.read_bytes() == body
    finally:
        server.close()


def test_a_cancel_from_another_process_is_carried_out_by_the_driver(tmp_path: Path) -> None:
    """cancel() of an operation another live process drives asks that process, which
    cancels it: its download ends in TransferCanceled, the partial data is gone when
    cancel() returns, and nothing is left to find.  With nobody driving it any more,
    a cancel is carried out where it is asked."""
    server = FaultServer(random.Random(10).randbytes(8 << 20))
    server.rate = 1 << 20
    state, result = tmp_path / "state", tmp_path / "out.bin"
    try:
        proc = _child_underway(state, server, result)
        d = BackgroundDownloader(state_dir=state)
        (op,) = d.get_current_downloads()
        op.cancel()
        assert op.status is S.CANCELED
        assert not control_path(result).exists()
        assert not part_path(result).exists()
        assert proc.wait(30) != 0  # its start_async raised TransferCanceled
        assert "TransferCanceled" in (tmp_path / "child.log").read_text()
        assert not result.exists()
        assert d.get_current_downloads() == []
        assert Store.at(state).answer_of(str(op.guid)) is None  # the ask is cleared

        proc = _child_underway(state, server, result)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (op,) = d.get_current_downloads()
        op.cancel()  # nobody drives it: canceled here, at once
        assert op.status is S.CANCELED
        assert not control_path(result).exists()
        assert not part_path(result).exists()
    finally:
        server.close()


_PAUSE_AND_EXIT = """
import atexit, sys, threading, time
from engine import BackgroundDownloader

def engine_thread_at_exit():  # registered first, so it runs after the engine's own
    alive = any(t.name == "bgtransfer-engine" and t.is_alive() for t in threading.enumerate())
    print("engine thread alive at exit:", alive, flush=True)

atexit.register(engine_thread_at_exit)
op = BackgroundDownloader(state_dir=sys.argv[2]).create_download(sys.argv[1], sys.argv[3])
op.start()
while op.progress.bytes_received < 2 << 20:
    time.sleep(0.01)
op.pause()
"""


def test_the_engine_thread_ends_before_the_interpreter_does(tmp_path: Path) -> None:
    """A program that pauses a download and exits at once: its exit lets the pause's
    clean-up end, then stops the engine loop and joins its thread.  A daemon thread
    left polling outlived the interpreter, and an event after that (a server hanging
    up on a parked connection) crashed the process with SIGSEGV in uvloop (a get
    cancelled from another process: one exit in seven to twenty)."""
    body = random.Random(5).randbytes(24 << 20)
    server = FaultServer(body)
    server.rate = 2 << 20
    try:
        child = subprocess.run(
            [sys.executable, "-c", _PAUSE_AND_EXIT, server.url, "state", "f.bin"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,  # not the source tree: the installed package, with its compiled core
        )
    finally:
        server.close()
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "engine thread alive at exit: False"
    (op,) = BackgroundDownloader(state_dir=tmp_path / "state").get_current_downloads()
    assert op.status is BackgroundTransferStatus.PAUSED_BY_APPLICATION
    assert part_path(tmp_path / "f.bin").exists()


_HOLDER = """
import sys, time
from pathlib import Path
from engine._state.oplock import OpLock
OpLock(Path(sys.argv[1]), sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_cancel_nobody_takes_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that holds an operation but never looks at the asks (here: one that
    only took its lock): the cancel is withdrawn after ANSWER_WITHIN and refused with
    ResultFileInUseError, the operation left as it was."""
    monkeypatch.setattr(engine._ops.cross_process, "ANSWER_WITHIN", 0.3)
    state = tmp_path / "state"
    d = BackgroundDownloader(state_dir=state)
    op = d.create_download("http://127.0.0.1:9/never", tmp_path / "x.bin")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(state), str(op.guid)],
        cwd=tmp_path,  # -c puts the working directory first: not the source tree's engine
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ResultFileInUseError, match="did not carry out the cancel"):
            op.cancel()
        assert op.status is S.IDLE
        assert Store.at(state).answer_of(str(op.guid)) is None  # withdrawn
        assert [o.guid for o in d.get_current_downloads()] == [op.guid]
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_engine_thread_writes_commit_together_and_waiters_see_them_durable(
    tmp_path: Path, make_downloader: Callable[..., BackgroundDownloader], nginx: Nginx
) -> None:
    """On the engine thread one pass of the loop writes in one transaction: another
    connection (another process) sees none of it until the pass ends, and what waits
    for durability (``when_durable``: reports, outcomes) runs only after the commit.
    A write from another thread is committed before it returns, the open group too."""
    d = make_downloader()
    state = tmp_path / "state"
    other = sqlite3.connect(state / "operations.sqlite3", check_same_thread=False)
    store = Store.at(state)

    def rows() -> list[tuple[str, int]]:
        return other.execute("SELECT guid, status FROM operations ORDER BY seq").fetchall()

    async def pass_() -> tuple[list[tuple[str, int]], bool, list[list[tuple[str, int]]]]:
        seen: list[list[tuple[str, int]]] = []
        op = d.create_download("http://127.0.0.1:9/never", tmp_path / "a.bin")
        store.when_durable(lambda: seen.append(rows()))
        during, ran = rows(), bool(seen)
        await asyncio.sleep(0)
        assert [g for g, _ in seen[0]] == [str(op.guid)]
        return during, ran, seen

    during, ran, _ = engine.run(pass_())
    assert during == []  # nothing visible inside the pass
    assert not ran  # and nothing told

    def elsewhere() -> None:
        d.create_download("http://127.0.0.1:9/never", tmp_path / "c.bin")

    async def open_group() -> None:
        d.create_download("http://127.0.0.1:9/never", tmp_path / "b.bin")
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()  # blocks the loop: the group stays open but for that thread
        assert len(rows()) == 3  # the other thread's commit took the group's write along

    engine.run(open_group())

    async def download() -> DownloadOperation:
        op = d.create_download(nginx.url("small.bin"), tmp_path / "small.bin")
        return await op.start_async()

    op = engine.run(download())
    assert str(op.guid) not in [g for g, _ in rows()]  # completed: its row is gone
    other.close()


def test_the_log_is_checkpointed_off_the_writing_thread(tmp_path: Path) -> None:
    """Commits leave their pages in the write-ahead log; a thread of the store copies
    them into the database file (the writer's own checkpoint is only a backstop)."""
    store = Store(tmp_path / "state")
    db = tmp_path / "state" / "operations.sqlite3"
    before = db.stat().st_size
    for i in range(4 * 64):
        store.group_behavior(f"group-{i}-" + "x" * 200, 1)  # a commit each
    wait_for(lambda: db.stat().st_size > before, timeout=10)
    assert {store.group_behavior(f"group-{i}-" + "x" * 200, None) for i in range(256)} == {1}
