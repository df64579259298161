"""Running command-line contenders in alternation and measuring them alike.

Each run is a child process: wall time, CPU seconds (user + system, from wait4) and
peak anonymous memory (``RssAnon`` sampled from /proc every 5 ms: a mapped result
file is page cache, not the process's memory, so RSS would mislead).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sidebyside import record


@dataclasses.dataclass
class Run:
    wall: float
    cpu: float
    rss_anon: int


def bgtransfer() -> str:
    """The bgtransfer script of the running interpreter's environment."""
    return shutil.which("bgtransfer", path=str(Path(sys.executable).parent)) or "bgtransfer"


def available(contenders: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: argv for name, argv in contenders.items() if shutil.which(argv[0])}


def _rss_anon(pid: int) -> int:
    """RssAnon of ``pid`` and its descendants (a contender may be a shell running two)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total = int(line.split()[1]) * 1024
                break
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_rss_anon(int(child)) for child in children)


def measure(argv: list[str], cwd: Path | None = None) -> Run:
    """Run ``argv`` to completion (it must succeed) and measure it."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_anon(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, peak[0])


def alternate(
    contenders: dict[str, list[str]],
    rounds: int,
    before: Callable[[str], None],
    after: Callable[[str], None],
    cwd: Path | None = None,
) -> dict[str, list[Run]]:
    """Round-robin: every contender once per round, so drift hits all alike, and each
    round starts one further along, so no contender always follows the same one (on
    this VM the run right after aria2c's took 2 s more, whoever made it)."""
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            argv = contenders[name]
            before(name)
            os.sync()  # nobody pays for the previous contender's dirty pages
            runs[name].append(measure(argv, cwd))
            after(name)
    return runs


def report(group: str, runs: dict[str, list[Run]], work: float, unit: str) -> None:
    """Median throughput (``work`` per second in ``unit``), CPU seconds and peak RssAnon."""
    for name, rs in runs.items():
        wall = statistics.median(r.wall for r in rs)
        record(f"{group}: {unit}", name, work / wall)
        record(f"{group}: wall s", name, wall, lower_is_better=True)
        record(f"{group}: CPU s", name, statistics.median(r.cpu for r in rs), lower_is_better=True)
        record(
            f"{group}: peak RssAnon MB",
            name,
            max(r.rss_anon for r in rs) / 1e6,
            lower_is_better=True,
        )


def aria2c(*args: str) -> list[str]:
    """aria2c, quiet, overwriting, with the space allocated as bgtransfer does (falloc)."""
    return [
        "aria2c",
        "-q",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=falloc",
        *args,
    ]
