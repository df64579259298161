"""A list of a million lines (``BGT_BENCH_LINES``), tiny files from loopback nginx.

The files are 1 KiB each, generated once and kept (biglist.py), served from folders of
a thousand; the list names each file's URL, and every contender writes the million
files into one folder on the disk (``BGT_BENCH_LIST_PLACE=tmpfs`` for tmpfs).  The
table shows, per contender, the median of ``BGT_BENCH_LIST_ROUNDS`` rounds (default
1, alternating when more) of:

- the total wall time and CPU (the child's rusage from ``os.wait4``), also a file;
- the time to the first request: from the process's start to the first line in
  nginx's access log (polled every 5 ms; nginx logs a request once it is served);
- the peak anonymous memory of the whole run (``RssAnon`` of the process and its
  children, sampled every 5 ms: mapped result files are page cache, not its memory);
- the bytes and requests nginx served (its access log);
- the files byte-exact, and those missing or wrong: each content is rebuilt from its
  name and compared, after the run (not timed); no other file may remain in the folder.

A run that passes ``BGT_BENCH_LIST_RSS_MB`` (default 4096) of anonymous memory or
``BGT_BENCH_LIST_SECONDS`` (default 3600) is killed, reported as stopped and fails
the benchmark: the machine is shared.  With ``--benchmark-disable`` (CI) a list of
20,000 lines checks the harness and every file.
"""

from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path

import biglist
import pytest
from contenders import Limits, Run, alternate, bgtransfer, load_average
from places import destination, fs_type, room
from pytest_benchmark.fixture import BenchmarkFixture
from served import ServedBytes, benchmarks_disabled
from servers import Nginx
from sidebyside import record


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


# pytest-timeout's default is for tests: a run may take up to its own limit, each.
@pytest.mark.timeout(
    2 * _env("BGT_BENCH_LIST_ROUNDS", 1) * _env("BGT_BENCH_LIST_SECONDS", 3600) + 900
)
def test_list_of_a_million_lines(
    benchmark: BenchmarkFixture,
    plain_nginx: Nginx,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A million-line list of 1 KiB files: time to the first request, peak anonymous
    memory, total time, every file byte-exact; bgtransfer mirror beside curl -Z."""
    small = benchmarks_disabled(request.config)
    count = 20_000 if small else _env("BGT_BENCH_LINES", 1_000_000)
    rounds = 1 if small else _env("BGT_BENCH_LIST_ROUNDS", 1)
    served = plain_nginx.www / f"list-{count}"
    served.symlink_to(biglist.tree(count), target_is_directory=True)
    urls = [plain_nginx.url(f"{served.name}/{biglist.served_path(i)}") for i in range(count)]
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n")
    place = os.environ.get("BGT_BENCH_LIST_PLACE", "disk")
    with destination(place, tmp_path) as dest:
        out = dest / "out"
        (tmp_path / "curl.cfg").write_text(
            "".join(
                f'url = "{u}"\noutput = "{out}/{biglist.name(i)}"\n' for i, u in enumerate(urls)
            )
        )
        contenders = {
            "bgtransfer mirror -j 16": [
                bgtransfer(), "mirror", "-q", "-i", "list.txt", "-d", str(out),
                "-j", "16", "--state-dir", "state",
            ],
            "curl -Z --parallel-max 16": [
                "curl", "-s", "-Z", "--parallel-max", "16", "-K", "curl.cfg",
            ],
        }  # fmt: skip
        room(dest, count * rounds * len(contenders), biglist.SIZE)
        limits = Limits(
            _env("BGT_BENCH_LIST_RSS_MB", 4096) << 20, _env("BGT_BENCH_LIST_SECONDS", 3600)
        )
        meter = ServedBytes(plain_nginx)
        checked: dict[str, list[tuple[int, int, int]]] = {name: [] for name in contenders}
        spent = dest / "spent"  # set aside, not deleted, until the end (see bench_engine)
        spent.mkdir()

        def fresh(_: str) -> None:
            if out.exists():
                out.rename(spent / str(len(os.listdir(spent))))
            shutil.rmtree(tmp_path / "state", ignore_errors=True)
            out.mkdir()
            meter.mark()

        def check(name: str) -> None:
            meter.take(name)
            checked[name].append(biglist.verify(out, count))

        def session() -> None:
            load = {"before": os.getloadavg()[0]}
            runs = alternate(
                contenders, rounds, fresh, check, cwd=tmp_path, first=meter.logged, limits=limits
            )
            load["after"] = os.getloadavg()[0]
            stopped = [f"{n}: {r.stopped}" for n, rs in runs.items() for r in rs if r.stopped]
            if not benchmark.disabled:
                group = f"a list of {count} lines of 1 KiB files on {fs_type(dest)}"
                group += f", median of {rounds}"
                load_average(group, load)
                meter.report(group)
                for name, rs in runs.items():
                    _report(group, name, rs, checked[name], count)
                for line in stopped:
                    print(line)
            assert not stopped, stopped
            for name, found in checked.items():
                assert all(c == (count, 0, 0) for c in found), (name, found)

        try:
            benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
        finally:
            shutil.rmtree(spent, ignore_errors=True)
            shutil.rmtree(tmp_path / "state", ignore_errors=True)
            for made in ("list.txt", "curl.cfg"):
                (tmp_path / made).unlink()


def _report(
    group: str, name: str, rs: list[Run], checked: list[tuple[int, int, int]], count: int
) -> None:
    """One contender's medians, peak memory and the least byte-exact of its rounds."""
    median = statistics.median
    wall, cpu = median(r.wall for r in rs), median(r.cpu for r in rs)
    record(f"{group}: wall s", name, wall, lower_is_better=True)
    firsts = [r.first for r in rs if r.first is not None]
    if firsts:
        record(f"{group}: s to the first request", name, median(firsts), lower_is_better=True)
    rss = max(r.rss_anon for r in rs) / 1e6
    record(f"{group}: peak RssAnon MB", name, rss, lower_is_better=True)
    record(f"{group}: CPU s", name, cpu, lower_is_better=True)
    record(f"{group}: CPU us a file", name, cpu / count * 1e6, lower_is_better=True)
    exact = min(c[0] for c in checked)
    wrong = max(c[1] + c[2] for c in checked)
    record(f"{group}: files byte-exact (least of the rounds)", name, exact)
    record(f"{group}: files missing or wrong, and others left", name, wrong, lower_is_better=True)
