"""SIGKILL at any instant leaves a control file whose set bits describe correct bytes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine._disk.core import RangeFile, remove_partial

CHILD = Path(__file__).with_name("killed_writer.py")
SIZE = 24 * 1024 * 1024 + 1234
BLOCK = 64 * 1024


def run_child_until_killed(result: Path, seed: int, delay: float) -> bool:
    """Start the writer, kill it ``delay`` seconds after it is ready; True if it finished first."""
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(result), str(SIZE), str(BLOCK), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return proc.stdout.read().strip() == "done"


def test_sigkill_twenty_times_never_leaves_a_wrong_block(tmp_path: Path) -> None:
    """20 kills at random moments: every block marked complete holds exactly the right bytes."""
    seed = 1234
    expected = memoryview(random.Random(seed).randbytes(SIZE))
    result = tmp_path / "crash.bin"
    rnd = random.Random(os.getpid())
    kills_mid_write = 0
    for _ in range(20):
        finished = run_child_until_killed(result, seed, rnd.uniform(0.0, 0.2))
        with RangeFile(result, SIZE, BLOCK, create=False) as rf:
            assert rf.verify() == 0
            for off, n in rf.ranges():
                assert rf.read(off, n) == expected[off : off + n], (off, n)
            complete = rf.is_complete
        if finished or complete:
            remove_partial(result)
        else:
            kills_mid_write += 1
    assert kills_mid_write >= 10, "the kills should mostly land while the child writes"
