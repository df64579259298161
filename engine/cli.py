"""The ``bgtransfer`` command (also ``python -m engine``): get and demo.

Exit status 0 only when every file is complete; 1 when a download failed; 2 for bad
usage.  Errors are one line on stderr (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from engine._config import TransferConfig
from engine._loop import engine_loop
from engine._segmented import SegmentedDownload, Snapshot
from engine.errors import TransferError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgtransfer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="download one file; running it again resumes")
    get.add_argument("url")
    get.add_argument("-o", "--output", type=Path, help="result file (default: from the URL)")
    get.add_argument("-c", "--connections", type=int, default=8, help="connections (default 8)")
    get.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    get.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo = sub.add_parser("demo", help="serve a generated file on loopback and download it")
    demo.add_argument("--size-mib", type=int, default=256)
    demo.add_argument("-c", "--connections", type=int, default=8)
    demo.add_argument("-q", "--quiet", action="store_true")
    return parser


def _name_from(url: str) -> Path:
    name = unquote(Path(urlsplit(url).path).name)
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "/\\")
    return Path(name if name not in ("", ".", "..") else "download.bin")


def _header(value: str) -> str:
    name, sep, _ = value.partition(":")
    if not sep or not name.strip() or "\r" in value or "\n" in value:
        raise argparse.ArgumentTypeError(f"bad header {value!r}: expected 'Name: value'")
    return value


class _Bar:
    """A rich progress bar on stderr when it is a terminal, else silence."""

    def __init__(self, quiet: bool, label: str) -> None:
        self._progress = None
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[conns]} conn"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=None, conns=0)
        self._progress.start()

    def update(self, snap: Snapshot) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=snap.bytes_received,
                total=snap.total_bytes_to_receive or None,
                conns=snap.connections,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _download(url: str, output: Path, connections: int, headers: list[str], quiet: bool) -> Path:
    bar = _Bar(quiet, output.name)
    job = SegmentedDownload(
        url,
        output,
        config=TransferConfig(connections=max(1, connections)),
        headers=headers,
        on_progress=bar.update,
    )
    try:
        return engine_loop().submit(job.run()).result()
    finally:
        bar.close()


def _demo(size_mib: int, connections: int, quiet: bool) -> int:
    from engine._loopback import LoopbackServer

    body = os.urandom(1 << 20) * max(1, size_mib)
    server = LoopbackServer(body)
    try:
        with tempfile.TemporaryDirectory(prefix="bgtransfer-demo-") as tmp:
            out = Path(tmp) / "demo.bin"
            print(f"serving {size_mib} MiB at {server.url}", file=sys.stderr)
            start = time.perf_counter()
            _download(server.url, out, connections, [], quiet)
            took = time.perf_counter() - start
            ok = out.read_bytes() == body
            print(
                f"downloaded {len(body) / 2**20:.0f} MiB in {took:.2f} s "
                f"({len(body) / took / 1e6:.0f} MB/s over {connections} connections), "
                f"{'byte-exact' if ok else 'MISMATCH'}"
            )
            return 0 if ok else 1
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args.size_mib, args.connections, args.quiet)
        headers = [_header(h) for h in args.header]
        output = args.output or _name_from(args.url)
        result = _download(args.url, output, args.connections, headers, args.quiet)
        if not args.quiet:
            print(result)
        return 0
    except argparse.ArgumentTypeError as exc:
        print(f"bgtransfer: {exc}", file=sys.stderr)
        return 2
    except (TransferError, OSError) as exc:
        if args.debug:
            raise
        print(f"bgtransfer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bgtransfer: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
