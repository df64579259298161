"""Starting the service on demand: under a lock, in a session of its own, logged.

A client that cannot connect takes the start lock (so that a hundred clients
starting at once start one service), tries once more (another client may have
started it meanwhile), then runs ``python -m engine service run`` detached from its
terminal and process group, with its output appended to ``service.log`` in the
state directory, and waits until the socket answers.  Nothing secret is on that
command line or in its environment: credentials only ever cross the socket.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

from engine.errors import TransferError
from engine.service.paths import ServicePaths
from engine.service.peercred import answers

START_TIMEOUT = 20.0
_spawned: list[subprocess.Popen[bytes]] = []
"""Services this process started: held (a Popen dropped while its process runs warns)
and polled at the next start, which reaps those that exited."""


class ServiceUnavailable(TransferError, ConnectionError):
    """The service could not be reached or started."""


def ensure_running(paths: ServicePaths, *, timeout: float = START_TIMEOUT) -> None:
    """Return once the service answers at ``paths.socket``, starting it if needed."""
    _spawned[:] = [p for p in _spawned if p.poll() is None]
    if answers(paths.socket):
        return
    paths.make_dirs()
    fd = os.open(paths.start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if answers(paths.socket):
            return
        process = _spawn(paths)
        _spawned.append(process)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not answers(paths.socket):
            code = process.poll()
            if code is not None and code != 0:
                raise ServiceUnavailable(f"the service exited with status {code} (see {paths.log})")
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"the service did not answer in {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    finally:
        os.close(fd)


def _spawn(paths: ServicePaths) -> subprocess.Popen[bytes]:
    with open(paths.log, "ab", buffering=0) as out:
        os.chmod(paths.log, 0o600)
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "service", "run", "--state-dir", str(paths.state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
