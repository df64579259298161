"""The background service as processes: started on demand, killed, restarted, shared."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers import Nginx
from service_env import ServiceEnv, bytes_served, own_file, svc_fixture  # noqa: F401 (a fixture)

from engine.service.client import ServiceClient
from engine.service.paths import SUN_PATH_MAX, ServicePaths

HERE = Path(__file__).parent
GET_BACKGROUND = [sys.executable, "-m", "engine", "get", "--background"]


@pytest.fixture
def slow_file(nginx: Nginx, request: pytest.FixtureRequest) -> tuple[str, bytes]:
    """A file of this test's own (so its access log lines are its own), served at 2 MB/s
    a connection: a download of it with a fixed ``-c 2`` lasts 6 s, still running when
    the test acts however slowly its next command starts on a loaded machine (adaptive
    connections would open enough of them to end it first)."""
    return own_file(nginx.www, request.node.name, 24 * 1024 * 1024 + 777)


def test_status_says_not_running_then_running_then_stopped(svc: ServiceEnv) -> None:
    """service status: 'not running' (3), 'running pid N' (0) once started, 3 after stop."""
    out = svc.cli("service", "status")
    assert (out.returncode, out.stdout.strip()) == (3, "not running")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "service", "run"],
        env=svc.env,
        stdout=subprocess.PIPE,
        cwd=svc.state_dir.parent,
    )
    try:
        deadline = time.monotonic() + 20
        while svc.cli("service", "status").returncode != 0:
            assert time.monotonic() < deadline, "the service never answered"
            time.sleep(0.1)
        out = svc.cli("service", "status")
        assert out.stdout.strip() == f"running pid {proc.pid}"
        second = svc.cli("service", "run")  # one service a state directory
        assert second.returncode == 1
        assert "already runs" in second.stdout
        assert svc.cli("service", "stop").returncode == 0
        assert proc.wait(timeout=20) == 0
        out = svc.cli("service", "status")
        assert (out.returncode, out.stdout.strip()) == (3, "not running")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_socket_is_owner_only_in_an_owner_only_directory(svc: ServiceEnv, nginx: Nginx) -> None:
    """The socket is 0600 in a 0700 directory; nothing listens on TCP for it."""
    out = svc.cli(
        "get", "--background", nginx.url("small.bin"), "-o", str(svc.state_dir.parent / "s")
    )
    assert out.returncode == 0, out.stderr
    sock = svc.paths.socket
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    pid = svc.pid()
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]}
    fds = os.listdir(f"/proc/{pid}/fd")
    targets = {
        os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds if os.path.exists(f"/proc/{pid}/fd/{fd}")
    }
    listening_tcp = {
        line.split()[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    }
    assert not {f"socket:[{i}]" for i in listening_tcp & inodes} & targets


def test_a_long_state_dir_puts_the_socket_under_xdg_runtime_dir(tmp_path: Path) -> None:
    """A socket path past sun_path's 107 bytes moves to $XDG_RUNTIME_DIR/bgtransfer/."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        paths = ServicePaths.of(deep)
        assert paths.socket.parent == runtime / "bgtransfer"
        assert len(os.fsencode(paths.socket)) <= SUN_PATH_MAX
        deep.parent.mkdir(parents=True)
        env = ServiceEnv(deep)
        env.env["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            out = env.cli("list")
            assert out.returncode == 0
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "service", "run"], env=env.env, cwd=tmp_path
            )
            deadline = time.monotonic() + 20
            while env.cli("service", "status").returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert stat.S_IMODE(paths.socket.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(paths.socket.stat().st_mode) == 0o600
            env.cli("service", "stop")
            proc.wait(timeout=20)
        finally:
            env.stop()
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


def test_get_background_returns_at_once_and_wait_follows_it(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """get --background prints the GUID and exits 0 before the download ends; wait
    follows it to the end with get's exit status, the file byte-exact."""
    name, data = slow_file
    out_file = tmp_path / "out.bin"
    out = svc.cli("get", "--background", "-c", "2", nginx.url(f"slow/{name}"), "-o", str(out_file))
    assert out.returncode == 0, out.stderr
    guid = out.stdout.strip()
    assert len(guid) == 36
    assert not out_file.exists()  # handed over, not downloaded by the command
    listed = svc.cli("list").stdout.splitlines()
    assert listed[0].split()[:2] == ["ID", "STATUS"]
    assert [row for row in listed[1:] if guid.startswith(row.split()[0])]  # its short id
    waited = svc.cli("wait", guid)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == str(out_file)
    assert out_file.read_bytes() == data


def test_wait_exits_1_for_a_download_that_failed(
    svc: ServiceEnv, nginx: Nginx, tmp_path: Path
) -> None:
    """wait's exit status is get's: 1 and the error on stderr for a 404."""
    out = svc.cli("get", "--background", nginx.url("nope.bin"), "-o", str(tmp_path / "n"))
    assert out.returncode == 0, out.stderr
    waited = svc.cli("wait", out.stdout.strip())
    assert waited.returncode == 1
    assert "404" in waited.stderr


def test_cancel_through_the_service(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """cancel GUID, with the service running, cancels it there: partial data removed,
    wait exits 1, list no longer shows it."""
    name, _ = slow_file
    out_file = tmp_path / "c.bin"
    guid = svc.cli(
        "get", "--background", "-c", "2", nginx.url(f"slow/{name}"), "-o", str(out_file)
    ).stdout.strip()
    svc.wait_for(guid, 0.05)
    out = svc.cli("cancel", guid)
    assert out.returncode == 0, out.stderr
    assert svc.op(guid)["status"] == "CANCELED"
    assert not list(tmp_path.glob("c.bin*"))
    assert svc.cli("wait", guid).returncode == 1
    assert not [
        row for row in svc.cli("list").stdout.splitlines()[1:] if guid.startswith(row.split()[0])
    ]


def test_a_killed_client_does_not_end_its_download(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """A client SIGKILLed mid-download: the download completes in the service, and a new
    client sees COMPLETED and, from the event id it had, every event it missed."""
    name, data = slow_file
    out_file = tmp_path / "k.bin"
    child = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "service_client_child.py"),
            str(svc.state_dir),
            nginx.url(f"slow/{name}"),
            str(out_file),
        ],
        env=svc.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    guid = child.stdout.readline().strip()
    assert child.stdout.readline().strip() == "progress"
    svc.wait_for(guid, 0.1)
    _status, info = svc.request("GET", "/v1/service")
    since, epoch = info["last_id"], info["epoch"]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    async def missed() -> list[dict[str, Any]]:
        client = ServiceClient(svc.state_dir)
        events: list[dict[str, Any]] = []
        try:
            ws = await client.events(since, epoch, [guid])
            async for msg in ws:
                event = json.loads(msg.data)
                events.append(event)
                if event["kind"] == "progress" and event["op"]["status"] == "COMPLETED":
                    break
            await ws.close()
        finally:
            await client.close()
        return events

    events = asyncio.run(asyncio.wait_for(missed(), 120))
    assert events[0]["kind"] == "hello"
    progress = [e for e in events if e["kind"] == "progress"]
    ids = [e["id"] for e in progress]
    assert ids == sorted(ids)
    assert ids[0] > since
    assert len(progress) >= 2  # the ticks it missed, then the end
    assert progress[-1]["op"]["status"] == "COMPLETED"
    assert out_file.read_bytes() == data
    assert svc.op(guid)["status"] == "COMPLETED"


def test_service_killed_mid_download_resumes_at_the_next_command(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """kill -9 of the service mid-download: the next command starts it again, it
    resumes, the file is byte-exact and at most 1.25x its size was served."""
    name, data = slow_file
    out_file = tmp_path / "r.bin"
    out = svc.cli("get", "--background", "-c", "2", nginx.url(f"slow/{name}"), "-o", str(out_file))
    guid = out.stdout.strip()
    svc.wait_for(guid, 0.4)
    pid = svc.pid()
    assert pid is not None
    assert pid > 0
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while svc.pid() == pid and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc.cli("service", "status").returncode == 3
    waited = svc.cli("wait", guid)
    assert waited.returncode == 0, waited.stderr
    assert svc.pid() not in (None, pid)
    assert out_file.read_bytes() == data
    served = bytes_served(nginx.requests(), name)
    assert len(data) <= served <= 1.25 * len(data), served / len(data)


def test_a_service_stopped_resumes_what_it_ran_when_it_starts_again(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """service stop mid-download, then any command: the download goes on and completes."""
    name, data = slow_file
    out_file = tmp_path / "t.bin"
    guid = svc.cli(
        "get", "--background", "-c", "2", nginx.url(f"slow/{name}"), "-o", str(out_file)
    ).stdout.strip()
    svc.wait_for(guid, 0.2)
    assert svc.cli("service", "stop").returncode == 0
    assert svc.cli("service", "status").returncode == 3
    waited = svc.cli("wait", guid)
    assert waited.returncode == 0, waited.stderr
    assert out_file.read_bytes() == data
    assert bytes_served(nginx.requests(), name) <= 1.25 * len(data)


def test_an_idle_service_exits_by_itself(tmp_path: Path, nginx: Nginx) -> None:
    """With nothing running and no client attached, the service exits after its idle
    timeout."""
    env = ServiceEnv(tmp_path / "state", idle=0.5)
    try:
        out = env.cli("get", "--background", nginx.url("small.bin"), "-o", str(tmp_path / "i"))
        assert out.returncode == 0
        assert env.cli("wait", out.stdout.strip()).returncode == 0
        deadline = time.monotonic() + 20
        while env.pid() is not None:
            assert time.monotonic() < deadline, "the idle service did not exit"
            time.sleep(0.1)
        assert not env.paths.socket.exists()
    finally:
        env.stop()


def test_service_install_writes_a_socket_unit_and_a_service_unit(
    svc: ServiceEnv, tmp_path: Path
) -> None:
    """service install writes bgtransfer.socket (ListenStream on the client's socket
    path, 0600) and bgtransfer.service (runs this interpreter's service for the state dir)."""
    svc.env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    out = svc.cli("service", "install")
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "config" / "systemd" / "user"
    socket_unit = (folder / "bgtransfer.socket").read_text()
    service_unit = (folder / "bgtransfer.service").read_text()
    assert f"ListenStream={svc.paths.socket}\n" in socket_unit
    assert "SocketMode=0600\n" in socket_unit
    assert f"{sys.executable} -m engine service run --state-dir {svc.state_dir}" in service_unit
    assert str(folder / "bgtransfer.socket") in out.stdout


def test_the_service_takes_the_socket_systemd_passes(svc: ServiceEnv, tmp_path: Path) -> None:
    """Socket activation: a service started with LISTEN_FDS serves on that socket."""
    from engine.service.peercred import bind_owner_only

    svc.paths.make_dirs()
    listener = bind_owner_only(svc.paths.socket)
    listener.setblocking(True)
    code = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
        "sys.argv = ['bgtransfer', 'service', 'run']; "
        "from engine.cli import run; run()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(listener.fileno())],
        env=svc.env,
        cwd=tmp_path,
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, info = svc.request("GET", "/v1/service")
                break
            except OSError:
                assert time.monotonic() < deadline, "nothing answered on the passed socket"
                time.sleep(0.1)
        assert (status, info["pid"]) == (200, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_wait_goes_on_across_a_service_killed_under_it(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """A wait running while the service is SIGKILLed starts it again, reads the state
    anew (new epoch) and still ends with the download's status."""
    name, data = slow_file
    out_file = tmp_path / "w.bin"
    guid = svc.cli(
        "get", "--background", "-c", "2", nginx.url(f"slow/{name}"), "-o", str(out_file)
    ).stdout.strip()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "engine", "wait", guid],
        env=svc.env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    svc.wait_for(guid, 0.3)
    _, before = svc.request("GET", "/v1/service")
    os.kill(before["pid"], signal.SIGKILL)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert out.strip() == str(out_file)
    assert out_file.read_bytes() == data
    _, after = svc.request("GET", "/v1/service")
    assert after["epoch"] > before["epoch"]


def test_events_are_numbered_and_a_stale_epoch_is_told_to_read_again(
    svc: ServiceEnv, nginx: Nginx, tmp_path: Path
) -> None:
    """Events carry increasing ids and the epoch; a client coming back with another
    epoch gets hello then reset; with the current one, what it missed."""
    guid = svc.cli(
        "get", "--background", nginx.url("small.bin"), "-o", str(tmp_path / "e")
    ).stdout.strip()
    assert svc.cli("wait", guid).returncode == 0
    _, info = svc.request("GET", "/v1/service")

    async def first_events(since: int, epoch: int) -> list[dict[str, Any]]:
        client = ServiceClient(svc.state_dir)
        try:
            ws = await client.events(since, epoch)
            events = [json.loads((await ws.receive(timeout=10)).data)]
            while len(events) < 3 and events[-1]["kind"] != "reset":
                try:
                    events.append(json.loads((await ws.receive(timeout=1)).data))
                except asyncio.TimeoutError:
                    break
            await ws.close()
            return events
        finally:
            await client.close()

    stale = asyncio.run(first_events(0, info["epoch"] + 100))
    assert [e["kind"] for e in stale] == ["hello", "reset"]
    replay = asyncio.run(first_events(0, info["epoch"]))
    assert replay[0]["kind"] == "hello"
    ids = [e["id"] for e in replay[1:]]
    assert ids
    assert ids == sorted(set(ids))
    assert all(e["epoch"] == info["epoch"] for e in replay)


def test_clients_starting_at_once_start_one_service(
    svc: ServiceEnv, nginx: Nginx, tmp_path: Path
) -> None:
    """Eight commands at once with no service running: each gets its answer, and one
    service was started (the start lock), logging to service.log in the state dir."""
    procs = [
        subprocess.Popen(
            [*GET_BACKGROUND, nginx.url("small.bin"), "-o", str(tmp_path / f"m{i}")],
            env=svc.env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    guids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        guids.append(out.strip())
    assert len(set(guids)) == 8
    assert svc.cli("wait", *guids).returncode == 0
    log = (svc.state_dir / "service.log").read_text()
    assert log.count("serving on") == 1
    assert stat.S_IMODE((svc.state_dir / "service.log").stat().st_mode) == 0o600


def test_a_second_get_of_a_file_the_service_downloads_follows_it_there(
    svc: ServiceEnv, nginx: Nginx, slow_file: tuple[str, bytes], tmp_path: Path
) -> None:
    """get of a file the service is downloading follows the service's download (it
    does not refuse it as another process's, nor start a second one)."""
    name, data = slow_file
    out_file = tmp_path / "f.bin"
    url = nginx.url(f"slow/{name}")
    # (a file found complete would be fetched anew)
    guid = svc.cli("get", "--background", "-c", "2", url, "-o", str(out_file)).stdout.strip()
    svc.wait_for(guid, 0.05)
    out = svc.cli("get", url, "-o", str(out_file))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(out_file)
    assert out_file.read_bytes() == data
    assert bytes_served(nginx.requests(), name) <= 1.25 * len(data)
