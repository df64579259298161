"""A real Dask cluster on loopback for the tests: ``dask scheduler`` and ``dask worker``
processes on ephemeral ports, each worker without a nanny so that a SIGKILL kills
the worker itself (a nanny would start it again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from polling import wait_for

LEASES = {
    # a dead worker's semaphore leases expire in seconds, not the default 30
    "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT": "3s",
    "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL": "0.5s",
}


class DaskCluster:
    """A scheduler and named workers (2 threads each) in their own processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, **LEASES}
        file = root / "scheduler.json"
        self._log = open(root / "dask.log", "ab")  # noqa: SIM115 - kept for the processes
        self.scheduler = self._spawn(
            "scheduler",
            "--host=127.0.0.1",
            "--port=0",
            "--no-dashboard",
            f"--scheduler-file={file}",
            "--idle-timeout=600",
        )
        wait_for(lambda: file.exists() and file.stat().st_size > 0, timeout=60)
        self.address: str = json.loads(file.read_text())["address"]
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._made = 0

    def _spawn(self, kind: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", kind, *args],  # the dask CLI of this interpreter
            env=self.env,
            cwd=self.root,
            stdout=self._log,
            stderr=self._log,
        )

    def start_worker(self) -> str:
        self._made += 1
        name = f"w{self._made}"
        local = self.root / name
        local.mkdir()
        self.workers[name] = self._spawn(
            "worker",
            self.address,
            f"--name={name}",
            "--nthreads=2",
            "--no-nanny",
            "--no-dashboard",
            "--host=127.0.0.1",
            f"--local-directory={local}",
            "--death-timeout=60",
        )
        return name

    def ensure(self, client: Any, count: int = 2) -> None:
        """``count`` live workers, connected: new ones for those that died."""
        for name, proc in list(self.workers.items()):
            if proc.poll() is not None:
                del self.workers[name]
        while len(self.workers) < count:
            self.start_worker()
        wanted = set(self.workers)
        wait_for(lambda: wanted <= set(self.names(client).values()), timeout=60)

    def names(self, client: Any) -> dict[str, str]:
        """Worker address -> name, as the scheduler knows them."""
        info = client.scheduler_info()["workers"]
        return {addr: w["name"] for addr, w in info.items()}

    def kill(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        procs = [*self.workers.values(), self.scheduler]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
