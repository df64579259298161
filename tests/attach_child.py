"""A child process for the kill tests: create-and-run, or re-attach and run, then exit.

    attach_child.py STATE_DIR create URL RESULT   start a new operation
    attach_child.py STATE_DIR attach              attach every current operation

Prints one line per operation handled (guid status) and exits 0 when all completed.
``BGT_TEST_DURABILITY`` (normal, full) sets the downloader's durability.
"""

from __future__ import annotations

import asyncio
import os
import sys

from engine import BackgroundDownloader, BackgroundTransferStatus, TransferConfig

CONFIG = TransferConfig(poll_interval=0.05, backoff_base=0.05, block_size=1 << 16)


async def main(argv: list[str]) -> int:
    downloader = BackgroundDownloader(
        state_dir=argv[0],
        config=CONFIG,
        block_size=1 << 16,
        max_connections_per_file=4,
        durability="full" if os.environ.get("BGT_TEST_DURABILITY") == "full" else "normal",
    )
    if argv[1] == "create":
        op = downloader.create_download(argv[2], argv[3])
        print(op.guid, flush=True)
        await op.start_async()
        ops = [op]
    else:
        ops = await downloader.get_current_downloads_async()
        await asyncio.gather(*(op.attach_async() for op in ops))
    for op in ops:
        print(op.guid, op.status.name, flush=True)
    return 0 if all(op.status is BackgroundTransferStatus.COMPLETED for op in ops) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
