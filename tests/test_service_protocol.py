"""The service's socket as an adversary sees it: other users, malformed requests, load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Nginx
from service_env import ServiceEnv

from engine.service.client import ServiceClient
from engine.service.follow import Follower
from engine.service.protocol import CREATE_FIELDS, OpView

OTHER_USER = "bgtsvc-test"


def start_service(env: ServiceEnv) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "service", "run"],
        env=env.env,
        cwd=env.state_dir.parent,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while env.cli("service", "status").returncode != 0:
        assert proc.poll() is None, "the service exited"
        assert time.monotonic() < deadline, "the service never answered"
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceEnv]:
    env = ServiceEnv(tmp_path_factory.mktemp("svcproto") / "state", idle=600)
    proc = start_service(env)
    try:
        yield env
    finally:
        env.stop()
        proc.wait(timeout=20)


def _other_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user (useradd) and run as it")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd/runuser not installed")
    if subprocess.run(["id", OTHER_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    return OTHER_USER


PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused", e.errno); sys.exit(0)
s.sendall(b"GET /v1/downloads HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(s.recv(65536).decode(errors="replace").split("\\r\\n")[0])
"""


def test_a_connection_from_another_uid_is_refused() -> None:
    """Another user is refused by SO_PEERCRED even with the socket's modes opened wide;
    with the modes as the service makes them it cannot even connect."""
    user = _other_user()
    base = Path(tempfile.mkdtemp(prefix="bgtsvc-", dir="/tmp"))
    try:
        env = ServiceEnv(base / "state", idle=600)
        proc = start_service(env)
        try:
            probe = [
                "runuser",
                "-u",
                user,
                "--",
                "/usr/bin/python3",
                "-c",
                PROBE,
                str(env.paths.socket),
            ]
            out = subprocess.run(probe, capture_output=True, text=True, check=True)
            assert out.stdout.startswith("refused 13")  # EACCES: the 0700 directory
            os.chmod(base, 0o711)
            os.chmod(env.state_dir, 0o711)
            os.chmod(env.paths.socket, 0o666)  # loosened on purpose: the uid check must hold
            out = subprocess.run(probe, capture_output=True, text=True, check=True)
            assert out.stdout.strip() == "HTTP/1.1 403 Forbidden"
            assert env.cli("service", "status").returncode == 0  # still serving its user
        finally:
            env.stop()
            proc.wait(timeout=20)
    finally:
        shutil.rmtree(base, ignore_errors=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
WRONG_TYPE = {
    str: json_values.filter(lambda v: not isinstance(v, str)),
    bool: json_values.filter(lambda v: not isinstance(v, bool)),
    int: json_values.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)),
    list: json_values.filter(lambda v: not isinstance(v, list)),
    dict: json_values.filter(lambda v: not isinstance(v, dict)),
}


@st.composite
def malformed_create(draw: st.DrawFn) -> bytes:
    """A create body that is wrong in at least one way the service must name."""
    kind = draw(st.sampled_from(["bytes", "not-object", "unknown", "wrong-type", "missing"]))
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=64))
        try:
            if isinstance(json.loads(raw), dict):
                raw = b"{" + raw
        except ValueError:
            pass
        return raw
    if kind == "not-object":
        return json.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict)))).encode()
    body: dict[str, Any] = {"uri": "http://127.0.0.1:1/x", "result_file": "/nonexistent/dir/x"}
    if kind == "unknown":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in CREATE_FIELDS))
        body[key] = draw(json_values)
    elif kind == "wrong-type":
        name = draw(st.sampled_from(sorted(CREATE_FIELDS)))
        body[name] = draw(WRONG_TYPE[CREATE_FIELDS[name].kind])  # type: ignore[index]
    else:
        del body[draw(st.sampled_from(["uri", "result_file"]))]
    return json.dumps(body).encode()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=malformed_create())
def test_malformed_creates_get_a_4xx_and_change_nothing(running: ServiceEnv, body: bytes) -> None:
    """Every malformed create is answered 4xx with a reason; the service keeps running and
    no operation appears."""
    status, data = running.request("POST", "/v1/downloads", body)
    assert 400 <= status < 500, (status, data)
    assert isinstance(data, dict)
    assert data["error"]
    status, listed = running.request("GET", "/v1/downloads")
    assert (status, listed) == (200, {"operations": []})


PATH_CHARS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./%", max_size=40)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.one_of(
        PATH_CHARS.map(lambda p: "/v1/" + p),
        st.tuples(
            PATH_CHARS, st.sampled_from(["start", "attach", "pause", "resume", "cancel", "x"])
        ).map(lambda t: f"/v1/downloads/{t[0].replace('/', '')}/{t[1]}"),
    ),
    body=st.binary(max_size=32) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_requests_to_unknown_operations_and_routes_get_a_4xx(
    running: ServiceEnv, method: str, path: str, body: bytes
) -> None:
    """Unknown routes, methods and GUIDs, with any body: a 4xx, never a 5xx or a crash."""
    status, data = running.request(method, path, body)
    assert 400 <= status < 500, (method, path, status, data)


def test_the_service_outlived_the_malformed_requests(running: ServiceEnv) -> None:
    """After the property tests, the same service process answers."""
    pid = running.pid()
    status, info = running.request("GET", "/v1/service")
    assert status == 200
    assert info["pid"] == pid


@pytest.mark.slow
def test_a_hundred_clients_each_follow_an_operation(tmp_path: Path, nginx: Nginx) -> None:
    """100 clients at once on one service, each on its own WebSocket following its own
    operation: each sees its operation complete, and every file is whole."""
    data = os.urandom(2 * 1024 * 1024 + 5)
    (nginx.www / "svc-hundred.bin").write_bytes(data)
    env = ServiceEnv(tmp_path / "state", idle=600)
    proc = start_service(env)

    async def one(i: int) -> OpView:
        client = ServiceClient(env.state_dir)
        try:
            view = await client.create(
                {
                    "uri": nginx.url("r20/svc-hundred.bin"),
                    "result_file": str(tmp_path / f"h{i}.bin"),
                    "start": False,
                    "max_connections": 2,
                }
            )
            latest: dict[str, OpView] = {}
            follower = Follower(client, [view.guid], lambda v: latest.__setitem__(v.guid, v))
            following = asyncio.ensure_future(
                follower.run(lambda: view.guid in latest and latest[view.guid].ended)
            )
            while follower.epoch is None:  # attached before it starts
                await asyncio.sleep(0.01)
            await client.control(view.guid, "start")
            await asyncio.wait_for(following, 240)
            return latest[view.guid]
        finally:
            await client.close()

    async def all_of_them() -> list[OpView]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    try:
        views = asyncio.run(all_of_them())
        assert [v.status for v in views] == ["COMPLETED"] * 100
        for i in range(100):
            assert (tmp_path / f"h{i}.bin").read_bytes() == data
    finally:
        env.stop()
        proc.wait(timeout=20)


def test_socket_file_modes_hold_after_a_restart_over_a_stale_socket(tmp_path: Path) -> None:
    """A socket left by a killed service is replaced, still 0600."""
    env = ServiceEnv(tmp_path / "state", idle=600)
    proc = start_service(env)
    proc.kill()
    proc.wait()
    assert env.paths.socket.exists()  # stale
    proc = start_service(env)
    try:
        assert stat.S_IMODE(env.paths.socket.stat().st_mode) == 0o600
    finally:
        env.stop()
        proc.wait(timeout=20)


def test_a_relative_result_path_is_refused(running: ServiceEnv) -> None:
    """The service's working directory is not the client's: a relative result is a 400."""
    body = json.dumps({"uri": "http://127.0.0.1:1/x", "result_file": "x.bin"}).encode()
    status, data = running.request("POST", "/v1/downloads", body)
    assert status == 400
    assert "absolute" in data["error"]
