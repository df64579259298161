"""Python bytecodes the engine thread runs for each file of ``bgtransfer mirror``.

Wall time on these VMs moves 10% from one run to the next, more than most single
changes to the small-file path are worth; the number of bytecodes does not move at
all.  A tracer on the engine thread counts them (``f_trace_opcodes``) while the
mirror command downloads LIST into DIR, after a warm-up of the first 20 URLs into a
folder of their own (connections, imports, first calls); it prints the count a file
and the functions that ran most of them.  C code (libcurl, SQLite, the core) is not
counted: this measures the Python each file costs, not its time.

    python bytecodes.py LIST DIR
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from engine import cli
from engine._runtime.loop import engine_loop

_counts: collections.Counter[str] = collections.Counter()


def _tracer(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    code = frame.f_code
    key = f"{os.path.basename(code.co_filename)}:{code.co_name}"

    def count(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            _counts[key] += 1
        return count

    return count


async def _trace(on: bool) -> None:
    sys.settrace(_tracer if on else None)  # the engine thread's own tracer


def _mirror(listing: Path, folder: Path, state: Path) -> None:
    args = ["mirror", "-q", "-i", str(listing), "-d", str(folder), "-j", "16", "-c", "4"]
    if cli.main([*args, "--state-dir", str(state)]) != 0:
        raise SystemExit(f"mirror of {listing} failed")


def main() -> None:
    listing, folder = Path(sys.argv[1]), Path(sys.argv[2])
    urls = listing.read_text().split()
    warm = folder.with_name(folder.name + "-warm-up")
    (warm / "list.txt").parent.mkdir(parents=True, exist_ok=True)
    (warm / "list.txt").write_text("\n".join(urls[:20]) + "\n")
    _mirror(warm / "list.txt", warm / "out", warm / "state")
    engine = engine_loop()
    engine.submit(_trace(True)).result()
    try:
        _mirror(listing, folder, folder.with_name(folder.name + "-state"))
    finally:
        engine.submit(_trace(False)).result()
    files = len(urls)
    print(f"bytecodes a file: {sum(_counts.values()) / files:.0f}")
    for name, n in _counts.most_common(int(os.environ.get("BGT_TOP", "15"))):
        print(f"  {n / files:6.0f}  {name}")


if __name__ == "__main__":
    main()
