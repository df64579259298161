"""Running the bgtransfer command in a subprocess, for the tests of the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def argv(*args: str) -> list[str]:
    """The command line of ``python -m engine ARGS``."""
    return [sys.executable, "-m", "engine", *args]


def bgt(
    *args: str, cwd: Path, state: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine`` (the same program as ``bgtransfer``) to completion."""
    extra = ["--state-dir", str(state)] if state is not None else []
    return subprocess.run(
        argv(*args, *extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def listed(cwd: Path, state: Path, *args: str) -> list[list[str]]:
    """``bgtransfer list``'s rows under its header, split into columns (two spaces
    or more apart: a column may hold one space)."""
    import re

    done = bgt("list", *args, cwd=cwd, state=state)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if not lines:
        return []
    assert lines[0].split()[:4] == ["ID", "STATUS", "SIZE", "DONE"]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
