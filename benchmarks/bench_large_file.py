"""One large file (BGT_BENCH_SIZE, default 2 GiB) at each durability, beside its peers.

``normal`` (the default) leaves the file in the page cache, as curl, wget2, rclone and
aria2c do: they are its contenders.  ``--durability full`` puts it on the disk before
it is complete: its contenders are ``curl -o FILE && sync FILE`` and ``dd
oflag=direct``.  Each table also has the socket's ceiling (``curl -o /dev/null``) and
the machine's floor for that kind of write: ``dd`` of as many zeros (into the page
cache, or with O_DIRECT) and ``curl -o /dev/null`` at once, nothing passed between
them.  Contenders alternate, five rounds, every one writing to the same file system;
the table shows median throughput, wall and CPU seconds, peak anonymous memory and the
bytes nginx served a run (its access log).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from contenders import alternate, aria2c, available, bgtransfer, report
from pytest_benchmark.fixture import BenchmarkFixture
from served import ServedBytes
from servers import Nginx


def _dd(out: Path, size: int, direct: bool) -> list[str]:
    """Zeros to ``out`` from one thread: what the write takes alone.  With O_DIRECT in
    1 MiB writes; into the page cache in 64 KiB writes, the pieces bgtransfer uses (a
    1 MiB write into the page cache costs two to three times the system time here)."""
    if direct:
        return ["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={size >> 20}",
                "oflag=direct", "status=none"]  # fmt: skip
    return ["dd", "if=/dev/zero", f"of={out}", "bs=64K", f"count={size >> 16}", "status=none"]


def _at_once(dd: list[str], to_null: list[str]) -> list[str]:
    return ["sh", "-c", f"{shlex.join(dd)} & {shlex.join(to_null)} && wait $!"]


def _session(
    benchmark: BenchmarkFixture,
    served: tuple[Nginx, int],
    tmp_path: Path,
    level: str,
    contenders: dict[str, list[str]],
) -> None:
    server, size = served
    out = tmp_path / "out.bin"
    contenders = available(contenders)
    rounds = 1 if benchmark.disabled else 5
    meter = ServedBytes(server)

    def before(_: str) -> None:
        out.unlink(missing_ok=True)
        meter.mark()

    def after(name: str) -> None:
        meter.take(name)
        if "/dev/null" not in name and not name.startswith("dd"):
            assert out.stat().st_size == size, name

    def session() -> None:
        runs = alternate(contenders, rounds, before, after)
        if not benchmark.disabled:
            group = f"one {size >> 20} MiB file, {level}, median of {rounds}"
            report(group, runs, size / 1e6, "MB/s")
            meter.report(group)

    benchmark.pedantic(session, rounds=1, iterations=1)  # type: ignore[no-untyped-call]


def test_one_large_file_normal(
    benchmark: BenchmarkFixture, served: tuple[Nginx, int], tmp_path: Path
) -> None:
    """The default durability against the tools that leave the file in the page cache."""
    server, size = served
    url = server.url("big.bin")
    out = tmp_path / "out.bin"
    to_null = ["curl", "-s", "-o", "/dev/null", url]
    bgt = [bgtransfer(), "get", "-q", "-c", "8", "-o", str(out), url]
    contenders = {
        "curl -o /dev/null (socket ceiling)": to_null,
        "dd and curl -o /dev/null at once (floor)": _at_once(_dd(out, size, False), to_null),
        "bgtransfer get -c 8": [*bgt, "--state-dir", str(tmp_path / "state")],
        "curl -o FILE": ["curl", "-s", "-o", str(out), url],
        "wget2 --max-threads=8": ["wget2", "-q", "--max-threads=8", "-O", str(out), url],
        "rclone copyurl": ["rclone", "copyurl", "-q", url, str(out)],
        "aria2c -x16 -s16": aria2c("-x16", "-s16", "-d", str(tmp_path), "-o", "out.bin", url),
    }
    _session(benchmark, served, tmp_path, "normal", contenders)


def test_one_large_file_full(
    benchmark: BenchmarkFixture, served: tuple[Nginx, int], tmp_path: Path
) -> None:
    """``--durability full`` against the tools that make the file durable too."""
    server, size = served
    url = server.url("big.bin")
    out = tmp_path / "out.bin"
    to_null = ["curl", "-s", "-o", "/dev/null", url]
    bgt = [bgtransfer(), "get", "-q", "-c", "8", "-o", str(out), url, "--durability", "full"]
    curl_sync = f"curl -s -o {shlex.quote(str(out))} {shlex.quote(url)} && sync {out}"
    contenders = {
        "curl -o /dev/null (socket ceiling)": to_null,
        "dd oflag=direct (the disk, one writer)": _dd(out, size, True),
        "dd oflag=direct and curl -o /dev/null at once (floor)": _at_once(
            _dd(out, size, True), to_null
        ),
        "bgtransfer get -c 8 --durability full": [*bgt, "--state-dir", str(tmp_path / "state")],
        "curl -o FILE && sync FILE": ["sh", "-c", curl_sync],
    }
    _session(benchmark, served, tmp_path, "full", contenders)
