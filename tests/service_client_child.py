"""A client process for the service tests: starts a download in the service through
``BackgroundDownloader(service=True)``, prints its GUID, then follows it until killed.

    service_client_child.py STATE_DIR URL RESULT
"""

from __future__ import annotations

import asyncio
import sys

from engine import BackgroundDownloader


async def main(state_dir: str, url: str, result: str) -> int:
    downloader = BackgroundDownloader(state_dir=state_dir, service=True)
    op = downloader.create_download(url, result)
    print(op.guid, flush=True)

    def progress(op: object) -> None:
        print("progress", flush=True)

    await op.start_async(progress)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
