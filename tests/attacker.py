"""A second, unprivileged local user for the tests that play an attacker.

Made with ``useradd`` the first time (root only); its steps run in a subprocess that
drops to it with ``os.setgid``/``os.setuid``, so what it plants really is its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NAME = "bgtattacker"


class Attacker:
    """The other user: ``run(code)`` runs Python code as it, in a shared folder."""

    def __init__(self, uid: int, gid: int, shared: Path) -> None:
        self.uid, self.gid, self.shared = uid, gid, shared

    def _drop(self) -> None:
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)

    def popen(self, code: str) -> subprocess.Popen[bytes]:
        """Start ``code`` as the other user, in the background."""
        return subprocess.Popen(
            [_python(), "-I", "-c", code], preexec_fn=self._drop, cwd=self.shared
        )

    def run(self, code: str) -> None:
        done = subprocess.run(
            [_python(), "-I", "-c", code],
            preexec_fn=self._drop,
            cwd=self.shared,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def _python() -> str:
    """An interpreter the other user may run (the tests' own may sit under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    pytest.skip("no Python interpreter the second user may run")


def attacker_user() -> tuple[int, int]:
    """(uid, gid) of the attacker, made when missing; skips the test where impossible."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a second local user is made with useradd and setuid")
    try:
        entry = pwd.getpwnam(NAME)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            pytest.skip("useradd is not installed: no second user to play the attacker")
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(NAME)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    """The other user and a folder both can write: world-writable, not sticky, outside
    pytest's private (0700) temp folders so the attacker can reach it."""
    uid, gid = attacker_user()
    shared = Path(tempfile.mkdtemp(prefix="bgt-shared-", dir="/tmp"))
    shared.chmod(0o777)
    try:
        yield Attacker(uid, gid, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
