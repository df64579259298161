"""Child process for the SIGKILL test: writes the missing parts of a file in random order.

Usage: python killed_writer.py RESULT SIZE BLOCK SEED.  The expected bytes are
``random.Random(SEED).randbytes(SIZE)``; the parent regenerates them to check.
It prints "ready" once the file is open, then writes until complete or killed.
"""

from __future__ import annotations

import random
import sys
import time

from engine._disk.core import RangeFile


def main() -> None:
    result, size, block, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = memoryview(random.Random(seed).randbytes(size))
    rf = RangeFile(result, size, block)
    pieces: list[tuple[int, int]] = []
    pos = 0
    rnd = random.Random()
    while True:
        gap = rf.next_missing(pos)
        if gap is None:
            break
        start, length = gap
        off = start
        while off < start + length:
            n = min(rnd.randrange(1, 3 * block), start + length - off)
            pieces.append((off, n))
            off += n
        pos = start + length
    rnd.shuffle(pieces)
    print("ready", flush=True)
    for off, n in pieces:
        rf.write(off, data[off : off + n])
        time.sleep(0.001)  # slow enough that most kills land mid-download, even under load
    print("done", flush=True)


if __name__ == "__main__":
    main()
