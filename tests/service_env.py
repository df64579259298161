"""Helpers for the service tests: run ``bgtransfer`` as a process, talk to the socket
over plain HTTP/1.1, find the service's pid, and stop it whatever state it is in."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.service.lockfile import holder
from engine.service.paths import ServicePaths


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the service's Unix socket (no aiohttp: a plain second client)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("bgtransfer", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(os.fspath(self._path))
        self.sock = sock


class ServiceEnv:
    """One state directory and its service, driven as a user would."""

    def __init__(self, state_dir: Path, idle: float = 30.0) -> None:
        self.state_dir = state_dir
        self.paths = ServicePaths.of(state_dir)
        self.env = {
            **os.environ,
            "BGTRANSFER_STATE_DIR": str(state_dir),
            "BGTRANSFER_SERVICE_IDLE": str(idle),
        }

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", *args],
            env=self.env,
            cwd=self.state_dir.parent,  # not the source tree: the installed package
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self) -> int | None:
        return holder(self.paths.lock)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.paths.socket)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw

    def op(self, guid: str) -> dict[str, Any]:
        status, data = self.request("GET", f"/v1/downloads/{guid}")
        assert status == 200, data
        result: dict[str, Any] = data
        return result

    def wait_for(self, guid: str, fraction: float, timeout: float = 60) -> dict[str, Any]:
        """Poll until the operation has ``fraction`` of its bytes (or has ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.op(guid)
            total = view["total_bytes_to_receive"]
            if view["status"] in ("COMPLETED", "ERROR", "CANCELED"):
                return view
            if total and view["bytes_received"] >= fraction * total:
                return view
            time.sleep(0.05)
        raise AssertionError(f"{guid} did not reach {fraction:.0%} in {timeout} s")

    def stop(self) -> None:
        """Stop the service; SIGKILL it when it does not go."""
        pid = self.pid()
        if pid is None or pid < 0:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


_LOG_LINE = re.compile(r'"GET (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\d+)')


def bytes_served(access_log: list[str], name: str) -> int:
    """Body bytes nginx sent for paths ending in ``name`` (combined log format)."""
    total = 0
    for line in access_log:
        m = _LOG_LINE.search(line)
        if m and m["path"].endswith("/" + name):
            total += int(m["bytes"])
    return total


@pytest.fixture(name="svc")
def svc_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceEnv]:
    """A state directory whose service clients start on demand (the test stops it)."""
    monkeypatch.setenv("BGTRANSFER_SERVICE_IDLE", "30")
    env = ServiceEnv(tmp_path / "state")
    try:
        yield env
    finally:
        env.stop()


def own_file(www: Path, test: str, size: int) -> tuple[str, bytes]:
    """A file of the test's own in nginx's root (its access log lines are its own)."""
    name = f"svc-{test}.bin".replace("[", "-").replace("]", "")
    data = os.urandom(size)
    (www / name).write_bytes(data)
    return name, data
