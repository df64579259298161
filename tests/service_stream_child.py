"""A client that reads a result through the service: prints the sha256 of what it read.

    service_stream_child.py STATE_DIR URL RESULT

Run in a mount namespace where RESULT's folder is hidden, it proves the descriptor
passing: it cannot open the file the service writes.
"""

from __future__ import annotations

import hashlib
import os
import sys

from engine import BackgroundDownloader


def main(state_dir: str, url: str, result: str) -> int:
    d = BackgroundDownloader(state_dir=state_dir, service=True)
    op = d.create_download(url, result)
    op.start()
    stream = op.get_result_stream_at(0, timeout=60)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    op.wait(60)
    print(os.path.exists(result), digest.hexdigest(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
