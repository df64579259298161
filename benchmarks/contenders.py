"""Running command-line contenders in alternation and measuring them alike.

Each run is a child process: wall time, CPU seconds (user + system of the child, its
threads and the children it waited for: the rusage ``os.wait4`` returns) and peak
anonymous memory (``RssAnon`` of the child and its descendants, sampled from /proc
every 5 ms: a mapped result file is page cache, not the process's memory, so RSS or
VmHWM would mislead).
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
    first: float | None = None
    """Seconds from the start to the first time ``measure``'s ``first`` held."""
    stopped: str = ""
    """Why ``measure`` killed the run before its end (a limit), else empty."""
    user: float = 0.0
    """The user part of ``cpu``: the program's own work, without the kernel's."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Where ``measure`` kills a run rather than let it take the shared machine's
    memory or the session's time: it is then reported as stopped, not as a figure."""

    rss_anon: int
    seconds: float


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


def measure(
    argv: list[str],
    cwd: Path | None = None,
    *,
    first: Callable[[], bool] | None = None,
    limits: Limits | None = None,
) -> Run:
    """Run ``argv`` to completion (it must succeed, unless ``limits`` stopped it) and
    measure it.  ``first``, polled with the memory every 5 ms until it holds, marks
    the run's first sign of work (a request in the server's log)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    seen: list[float] = []
    stopped: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_anon(proc.pid))
            if first is not None and not seen and first():
                seen.append(time.perf_counter() - start)
            if limits is not None and not stopped:
                late = time.perf_counter() - start > limits.seconds
                if peak[0] > limits.rss_anon or late:
                    stopped.append(
                        f"stopped after {limits.seconds:.0f} s"
                        if late
                        else f"stopped at {peak[0] / 1e6:.0f} MB of RssAnon"
                    )
                    proc.kill()

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
    if proc.returncode != 0 and not stopped:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(
        wall, cpu, peak[0], seen[0] if seen else None, stopped[0] if stopped else "",
        usage.ru_utime,
    )  # fmt: skip


def alternate(
    contenders: dict[str, list[str]],
    rounds: int,
    before: Callable[[str], None],
    after: Callable[[str], None],
    cwd: Path | None = None,
    *,
    first: Callable[[], bool] | None = None,
    limits: Limits | None = None,
) -> dict[str, list[Run]]:
    """Round-robin: every contender once per round, so drift hits all alike, and each
    round starts one further along, so no contender always follows the same one (on
    this VM the run right after aria2c's took 2 s more, whoever made it).  ``first``
    and ``limits`` go to every ``measure``; ``after`` runs after a stopped run too."""
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            argv = contenders[name]
            before(name)
            os.sync()  # nobody pays for the previous contender's dirty pages
            runs[name].append(measure(argv, cwd, first=first, limits=limits))
            after(name)
    return runs


def report(
    group: str,
    runs: dict[str, list[Run]],
    work: float,
    unit: str,
    *,
    files: int = 0,
    base: str = "",
) -> None:
    """Median throughput (``work`` per second in ``unit``), wall and CPU seconds and
    peak RssAnon; with ``files``, the CPU a file in microseconds; with ``base`` (a
    contender's name), each median wall divided by the base's of the same rounds."""
    walls = {name: statistics.median(r.wall for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        wall = walls[name]
        cpu = statistics.median(r.cpu for r in rs)
        record(f"{group}: {unit}", name, work / wall)
        record(f"{group}: wall s", name, wall, lower_is_better=True)
        if base in walls:
            record(f"{group}: wall / {base}'s", name, wall / walls[base], lower_is_better=True)
        record(f"{group}: CPU s", name, cpu, lower_is_better=True)
        if files:
            record(f"{group}: CPU us a file", name, cpu / files * 1e6, lower_is_better=True)
        record(
            f"{group}: peak RssAnon MB",
            name,
            max(r.rss_anon for r in rs) / 1e6,
            lower_is_better=True,
        )


def load_average(group: str, taken: dict[str, float]) -> None:
    """The 1-minute load averages ``os.getloadavg()`` gave at the moments named, into
    the table: the machine is shared, and a figure reads differently when other work
    ran beside it."""
    for when, value in taken.items():
        record(f"{group}: load average (1 min)", when, value, lower_is_better=True)


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
