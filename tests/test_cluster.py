"""bgtransfer mirror on a real Dask cluster: a scheduler and two workers on loopback."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dask_cluster import DaskCluster
from polling import wait_for
from servers import FaultHandler, FaultServer, Nginx, sha256

distributed = pytest.importorskip("distributed")

from engine.cli.names import Entry  # noqa: E402
from engine.cluster import cut  # noqa: E402
from engine.cluster._task import Options, run_shard  # noqa: E402


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """``dask scheduler`` and two ``dask worker`` processes, stopped at the end."""
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start_worker()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(dask_cluster: DaskCluster) -> Iterator[Any]:
    """A client of the cluster, once two workers are up (a killed one replaced)."""
    with distributed.Client(dask_cluster.address, timeout="30s") as c:
        dask_cluster.ensure(c)
        yield c


def _serve(nginx: Nginx, folder: str, count: int, size: int) -> list[str]:
    """``count`` files of random bytes under ``folder`` in nginx's root; their names."""
    served = nginx.www / folder
    served.mkdir(exist_ok=True)
    names = [f"f{i:03d}.bin" for i in range(count)]
    for name in names:
        (served / name).write_bytes(os.urandom(size))
    return names


def _fetches(nginx: Nginx, path: str) -> int:
    """Requests nginx answered for URLs that start with ``path``."""
    return sum(1 for line in nginx.requests() if f'"GET /{path}' in line)


def _bytes_served(nginx: Nginx, path: str) -> int:
    """Body bytes nginx sent for URLs that start with ``path`` (its combined log:
    '"GET /path HTTP/1.1" STATUS BYTES ...')."""
    lines = [line for line in nginx.requests() if f'"GET /{path}' in line]
    return sum(int(line.split('" ', 1)[1].split()[1]) for line in lines)


def _mirror(list_file: Path, out: Path, address: str, *extra: str) -> subprocess.Popen[str]:
    command = ["mirror", "-i", str(list_file), "-d", str(out), "--cluster", address, "-q"]
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *command, *extra],
        cwd=list_file.parent,  # not the source tree: the installed package
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _same(out: Path, served: Path, names: list[str]) -> None:
    for name in names:
        assert (out / name).read_bytes() == (served / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.endswith((".bgtpart", ".bgtctl"))]


def test_a_worker_killed_mid_mirror_ends_0_byte_exact(
    nginx: Nginx, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """SIGKILL of a worker in the middle of a mirror: status 0, every file byte-exact."""
    names = _serve(nginx, "killed", 12, 12 << 20)
    (tmp_path / "list").write_text("".join(nginx.url(f"r20/killed/{n}") + "\n" for n in names))
    out = tmp_path / "out"
    proc = _mirror(tmp_path / "list", out, dask_cluster.address, "-c", "3", "-j", "2")
    try:
        staging = out / ".bgtransfer" / "staging"
        wait_for(lambda: any(staging.glob("*/*.bgtctl")), timeout=60)  # a file half done
        busy = [a for a, keys in client.processing().items() if keys]
        dask_cluster.kill(dask_cluster.names(client)[busy[0]])
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "0 failed" in err
    _same(out, nginx.www / "killed", names)


def test_a_shard_run_twice_at_once_leaves_correct_files(
    nginx: Nginx, client: Any, tmp_path: Path
) -> None:
    """Two runs of one shard at once (a zombie): both commit, the files are exact."""
    names = _serve(nginx, "zombie", 3, 10 << 20)
    entries = [Entry(nginx.url(f"slow/zombie/{n}"), n, None) for n in names]
    (shard,) = cut(entries, size=len(entries))
    out = tmp_path / "out"
    out.mkdir()
    gate = f"zombie-{uuid.uuid4().hex}"

    def at_once(address: str) -> dict[str, Any]:
        """run_shard, once the test opens the gate (both runs are on their workers)."""
        distributed.Event(gate).wait(60)
        return run_shard(shard, str(out), Options(parallel=3, connections=3))

    workers = list(client.scheduler_info()["workers"])[:2]
    runs = [
        client.submit(at_once, a, key=f"{gate}-{i}", pure=False, workers=[a])
        for i, a in enumerate(workers)
    ]
    wait_for(lambda: sum(len(keys) for keys in client.processing().values()) == 2, timeout=60)
    distributed.Event(gate, client=client).set()
    records = client.gather(runs)
    assert [r["failed"] for r in records] == [[], []]
    # both fetched every file: neither found one the other had put there (nginx may
    # log a request a moment after its client got the last byte)
    both = 2 * len(names) * (10 << 20)
    wait_for(lambda: _bytes_served(nginx, "slow/zombie/") >= both, timeout=10)
    _same(out, nginx.www / "zombie", names)
    assert (out / ".bgtransfer" / "shards" / f"{shard.id}.json").exists()
    assert not [p for p in (out / ".bgtransfer" / "staging").iterdir() if p.is_dir()]


def test_a_rerun_ends_0_and_fetches_nothing(
    nginx: Nginx, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """The same list run again: status 0, every file already complete, no request."""
    names = _serve(nginx, "again", 40, 64 << 10)
    (tmp_path / "list").write_text("".join(nginx.url(f"again/{n}") + "\n" for n in names))
    out = tmp_path / "out"
    first = _mirror(tmp_path / "list", out, dask_cluster.address)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "40 downloaded" in err
    wait_for(lambda: _fetches(nginx, "again/") >= 40)  # nginx logs a moment after a reply
    served = _fetches(nginx, "again/")
    again = _mirror(tmp_path / "list", out, dask_cluster.address)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "0 downloaded, 40 already complete, 0 failed" in err
    assert _fetches(nginx, "again/") == served
    _same(out, nginx.www / "again", names)


def test_a_failed_file_makes_status_1_and_is_recorded(
    nginx: Nginx, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """A 404 in the list: the others complete, status 1, the shard's record names it."""
    names = _serve(nginx, "partly", 3, 1000)
    lines = [nginx.url(f"partly/{n}") for n in names] + [nginx.url("partly/missing.bin")]
    (tmp_path / "list").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = _mirror(tmp_path / "list", out, dask_cluster.address)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "3 downloaded, 0 already complete, 1 failed" in err
    assert re.search(r"missing\.bin.*404", err)
    records = [p.read_text() for p in (out / ".bgtransfer" / "shards").iterdir()]
    assert sum('"missing.bin"' in r for r in records) == 1


def test_bad_lines_make_a_cluster_mirror_end_1(
    nginx: Nginx, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """--cluster: a bad line and a duplicate name are told with their numbers, the good
    lines all complete, byte-exact, and the status is 1."""
    names = _serve(nginx, "badlines", 2, 1000)
    good = [nginx.url(f"badlines/{n}") for n in names]
    (tmp_path / "list").write_text(f"{good[0]}\nnot-a-url\n{good[1]}\n{good[1]}\n")
    out = tmp_path / "out"
    proc = _mirror(tmp_path / "list", out, dask_cluster.address)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "list:2: 'not-a-url' is not a URL" in err
    assert "list:4: the name 'f001.bin' is already used by line 3" in err
    assert "2 downloaded" in err
    _same(out, nginx.www / "badlines", names)


def test_without_cluster_nothing_of_dask_is_imported(nginx: Nginx, tmp_path: Path) -> None:
    """A mirror without --cluster runs with neither dask nor distributed imported."""
    (tmp_path / "list").write_text(nginx.url("small.bin") + "\n")
    code = (
        "import sys; from engine.cli import main; "
        f"code = main(['mirror', '-i', {str(tmp_path / 'list')!r}, '-d', "
        f"{str(tmp_path / 'out')!r}, '-q', '--state-dir', {str(tmp_path / 's')!r}]); "
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["0", "[]"], done.stderr


def test_shard_ids_follow_from_the_list_alone() -> None:
    """The same list cuts into the same ids; a changed line changes its shard's id only."""
    entries = [Entry(f"http://h/{i}", f"{i}.bin", None) for i in range(1000)]
    first, second = cut(entries), cut(list(entries))
    assert [s.id for s in first] == [s.id for s in second]
    assert len(first) == 63  # 16 files a shard (1000 / 64, rounded up)
    assert sum(len(s.items) for s in first) == 1000
    entries[500] = Entry("http://h/other", "500.bin", None)
    changed = [a.id != b.id for a, b in zip(first, cut(entries), strict=True)]
    assert changed.count(True) == 1


def test_bad_cluster_address_is_bad_usage(tmp_path: Path) -> None:
    """--cluster with neither a scheduler address nor local:N, or with --state-dir:
    one line, status 2."""
    (tmp_path / "list").write_text("http://127.0.0.1:9/x\n")
    for bad in ("nowhere", "local:0"):
        proc = _mirror(tmp_path / "list", tmp_path / "out", bad)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert f"--cluster {bad}" in err
    proc = _mirror(tmp_path / "list", tmp_path / "out", "local:1", "--state-dir", "s")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--state-dir does not go with --cluster" in err


class _Counting(FaultHandler):
    """Counts the bodies being sent at once (the server's ``peak``)."""

    server: _CountingServer

    def send_body(self, first: int, last: int) -> None:
        """The body at ``server.rate``, counted from its first byte written to its last
        (FaultHandler's pacing sleeps after the last, which a loaded machine stretches
        into the next request's time)."""
        srv = self.server
        with srv.lock:
            srv.active += 1
            srv.peak = max(srv.peak, srv.active)
        view, off, started = memoryview(srv.body), first, time.monotonic()
        try:
            while off <= last:
                self.wfile.write(view[off : min(off + 65536, last + 1)])
                off += 65536
                ahead = (off - first) / srv.rate - (time.monotonic() - started)
                if off <= last and ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with srv.lock:
                srv.active -= 1


class _CountingServer(FaultServer):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.active = self.peak = 0
        self.RequestHandlerClass = _Counting


def test_the_cap_of_connections_a_host_holds_across_the_cluster(
    body: bytes, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """--host-connections 2 over two workers of two threads: never more than two
    requests at the server at once (four shards could run), every file exact."""
    server = _CountingServer(body)
    server.rate = 16 << 20
    try:
        (tmp_path / "list").write_text("".join(f"{server.url}?{i} f{i}.bin\n" for i in range(6)))
        out = tmp_path / "out"
        proc = _mirror(
            tmp_path / "list", out, dask_cluster.address, "--host-connections", "2", "-c", "1"
        )
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert server.peak == 2
        assert all((out / f"f{i}.bin").read_bytes() == body for i in range(6))
    finally:
        server.close()


def test_a_shard_run_again_elsewhere_continues_the_partial_file(
    body: bytes, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """A worker killed in the middle of a file: the worker that runs the shard again
    continues from the control file the first left (no request from byte 0 again)."""
    server = FaultServer(body)
    server.rate = 1 << 20  # the 3.5 MiB left after the waits below take 3.5 s: time to kill
    try:
        (shard,) = cut([Entry(server.url, "big.bin", None)])
        out = tmp_path / "out"
        out.mkdir()
        first = next(iter(client.scheduler_info()["workers"]))
        future = client.submit(
            run_shard,
            shard,
            str(out),
            Options(parallel=1, connections=1),
            key=f"again-{uuid.uuid4().hex}",
            pure=False,
            workers=[first],
            allow_other_workers=True,
        )
        # the second request under way: the first 4 MiB were all received and written
        wait_for(lambda: len(server.ranges_seen) >= 2, timeout=60)
        wait_for(lambda: server.bytes_sent > (9 << 19), timeout=60)
        dask_cluster.kill(dask_cluster.names(client)[first])
        seen = len(server.ranges_seen)
        record = future.result(timeout=120)
        assert record["failed"] == []
        assert (out / "big.bin").read_bytes() == body
        again = server.ranges_seen[seen:]
        assert again
        assert not [r for r in again if r is None or r.startswith("bytes=0-")], again
    finally:
        server.close()


def test_a_running_shard_moves_the_clients_bar(
    body: bytes, dask_cluster: DaskCluster, client: Any, tmp_path: Path
) -> None:
    """On a terminal, the bytes of a shard still running reach the client's bar; Ctrl-C
    ends the command with 130 and says that running it again resumes."""
    server = FaultServer(body)
    server.rate = 1 << 20
    (tmp_path / "list").write_text(f"{server.url} slow.bin\n")
    command = ["mirror", "-i", "list", "-d", "out", "--cluster", dask_cluster.address]
    pid, fd = pty.fork()
    if pid == 0:  # the child: bgtransfer on the pty, as a user at a terminal runs it
        os.chdir(tmp_path)
        os.execv(sys.executable, [sys.executable, "-m", "engine", *command])
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while not re.search(rb"[1-9][0-9.]* MB", seen):  # bytes, while its shard runs
            assert time.monotonic() < deadline, seen
            if select.select([fd], [], [], 0.5)[0]:
                seen += os.read(fd, 65536)
        assert b"0/1 done" in seen
        assert not (tmp_path / "out" / "slow.bin").exists()
    finally:
        os.kill(pid, signal.SIGINT)
        rest: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(fd, rest), daemon=True)
        reader.start()
        _, status = os.waitpid(pid, 0)
        reader.join(timeout=10)
        server.close()
    assert os.waitstatus_to_exitcode(status) == 130
    assert b"run the same command again" in b"".join(rest)


def _drain(fd: int, into: list[bytes]) -> None:
    """Read the pty until it closes, so the child never blocks on a full terminal."""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            into.append(chunk)


def test_mirror_from_python_returns_a_report(nginx: Nginx, client: Any, tmp_path: Path) -> None:
    """engine.cluster.mirror(lines, dest, client=...): a Report of every file, all exact."""
    import engine.cluster

    names = _serve(nginx, "python", 5, 3000)
    lines = [f"{nginx.url(f'python/{n}')} copy-{n}" for n in names] + ["# a comment"]
    report = engine.cluster.mirror(lines, tmp_path / "out", client=client, parallel=2)
    assert report.ok
    assert (report.files, report.downloaded, report.already, report.failed) == (5, 5, 0, [])
    assert report.size == 5 * 3000
    for n in names:
        assert (tmp_path / "out" / f"copy-{n}").read_bytes() == (
            nginx.www / "python" / n
        ).read_bytes()


def test_a_file_there_is_skipped_only_when_its_checksum_matches(
    nginx: Nginx, client: Any, tmp_path: Path
) -> None:
    """Files already in the destination: one that matches its sha256 is not fetched,
    one that does not is fetched again and replaced."""
    import engine.cluster

    names = _serve(nginx, "sums", 2, 5000)
    served = nginx.www / "sums"
    out = tmp_path / "out"
    out.mkdir()
    (out / names[0]).write_bytes((served / names[0]).read_bytes())
    (out / names[1]).write_bytes(b"not what the server has")
    lines = [f"{nginx.url(f'sums/{n}')} sha256={sha256(served / n)}" for n in names]
    before = _fetches(nginx, "sums/")
    report = engine.cluster.mirror(lines, out, client=client)
    assert (report.downloaded, report.already, report.failed) == (1, 1, [])
    wait_for(lambda: _fetches(nginx, "sums/") >= before + 1)  # nginx logs a moment after
    assert _fetches(nginx, "sums/") == before + 1
    _same(out, served, names)


def test_a_lines_other_urls_reach_the_workers(client: Any, tmp_path: Path) -> None:
    """``BUSY<TAB>GOOD NAME`` mirrored on the cluster: the worker drops the source
    answering 503 and takes the file byte-exact from the other; the shard leases
    both hosts."""
    import engine.cluster

    body = os.urandom(3 << 20)
    busy, good = FaultServer(body, fault="503"), FaultServer(body)
    good.last_modified = busy.last_modified
    try:
        lines = [f"{busy.url}\t{good.url} both.bin"]
        (shard,) = cut([Entry(busy.url, "both.bin", None, 1, (good.url,))])
        assert len(shard.hosts) == 2
        report = engine.cluster.mirror(lines, tmp_path / "out", client=client)
        assert report.ok, report.failed
        assert (tmp_path / "out" / "both.bin").read_bytes() == body
        assert busy.requests >= 1
        assert busy.bytes_sent == 0
    finally:
        busy.close()
        good.close()
