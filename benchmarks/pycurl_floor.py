"""The least a Python program on bgtransfer's design can do for many small files.

One asyncio loop (uvloop), pycurl's own ``AsyncCurlMulti`` driver, ``PARALLEL``
handles reused so connections stay alive, each body gathered in memory and written
with one open/write/close.  No state database, no partial file, no fsync, no
rename, no check of the response beyond its status: nothing a download engine must
do beyond moving the bytes.  The benchmarks run it beside ``curl -Z`` to show how much of the gap is
the design's (a Python call chain per file through pycurl) and how much bgtransfer's.

    python pycurl_floor.py LIST DIR PARALLEL
"""

from __future__ import annotations

import asyncio
import os
import sys

import pycurl


async def mirror(urls: list[str], folder: str, parallel: int) -> None:
    multi = pycurl.AsyncCurlMulti()
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, parallel)
    free = [pycurl.Curl() for _ in range(parallel)]
    slots = asyncio.Semaphore(parallel)

    async def one(index: int, url: str) -> None:
        curl = free.pop()
        body = bytearray()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEFUNCTION, body.extend)
        try:
            await multi.perform(curl)
            if curl.getinfo(pycurl.RESPONSE_CODE) != 200:
                raise RuntimeError(f"{url}: HTTP {curl.getinfo(pycurl.RESPONSE_CODE)}")
        finally:
            free.append(curl)
            slots.release()
        fd = os.open(os.path.join(folder, f"f{index:05d}.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)

    tasks = []
    for index, url in enumerate(urls):
        await slots.acquire()
        tasks.append(asyncio.ensure_future(one(index, url)))
    await asyncio.gather(*tasks)


def main() -> None:
    listing, folder, parallel = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(listing) as fh:
        urls = fh.read().split()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(mirror(urls, folder, parallel))


if __name__ == "__main__":
    main()
