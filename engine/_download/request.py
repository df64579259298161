"""One request on the wire: the loop's handles, one range's set-up, the transfer.

Theory of operation
-------------------
libcurl does the I/O.  Each engine loop has one multi handle (``engine._net.multi``),
a pool of easy handles whose connections stay alive, and the slots every request
takes before it goes on the wire (``engine._net.connections``): ``multi_for_loop``.
``set_up`` readies a pooled handle for one request of a range: the options
(``engine._net.transport.configure``), the range (a header, or REST for FTP and SFTP,
whose replies stand in for a head), the header callback (``ResponseHead.lines.append``:
the head is parsed once, at the first byte) and the write callback
(``engine._download.writer``).  ``transfer`` runs it to its end and returns libcurl's
code.  SFTP sends no head, so its size and time come from a ``stat`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pycurl

from engine._download.segments import Stop, Stream
from engine._net.connections import Slots
from engine._net.transport import (
    FtpReplies,
    HandlePool,
    RequestOptions,
    configure,
    curl_error,
    file_time,
    new_multi,
    one_connection,
    set_range,
    unplain,
)
from engine._runtime.descriptors import budget
from engine._runtime.loop import being_cancelled, running_loop
from engine.config import TransferConfig
from engine.errors import TransferError

TIMED_OUT: int = pycurl.E_OPERATION_TIMEDOUT
"""libcurl's code for a request that timed out (or ran below the low-speed limit)."""
REFUSED: int = pycurl.E_COULDNT_CONNECT
"""libcurl's code for a connection the server refused."""
EFFECTIVE_URL: int = pycurl.EFFECTIVE_URL
"""What ``curl.getinfo`` is asked for the URL a request ended at, after redirects."""

_shared: dict[asyncio.AbstractEventLoop, tuple[Any, HandlePool, Slots]] = {}


def multi_for_loop() -> tuple[Any, HandlePool, Slots]:
    """The running loop's multi handle, its pool of easy handles, and the slots its
    requests take (one engine loop per process: one of each)."""
    loop = running_loop()
    shared = _shared.get(loop)
    if shared is None:
        _forget_closed_loops()
        fds = budget()  # a socket a request: never more than the descriptors allow
        shared = _shared[loop] = (
            new_multi(max_total=fds.requests, max_host=min(64, fds.requests)),
            HandlePool(),
            Slots(per_host=min(64, fds.requests), total=fds.requests),
        )
    return shared


def _forget_closed_loops() -> None:
    """Let go of what loops closed since had: the multi's connections and their
    duplicates, the pool's handles.  Only the engine loop runs operations, but a
    program (the tests are one) may run downloads on loops of its own, one after
    another: each kept six descriptors open for the life of the process, and a
    thousand tests reached the 1024 that ``select`` takes."""
    for loop in [loop for loop in _shared if loop.is_closed()]:
        multi, pool, _ = _shared.pop(loop)
        pool.close()
        with contextlib.suppress(RuntimeError, OSError, pycurl.error):  # not this loop's
            multi.close_after_loop()


def set_up(
    curl: Any,
    url: str,
    config: TransferConfig,
    headers: list[str],
    options: RequestOptions,
    stream: Stream,
    on_write: Callable[[memoryview], int | None],
    replies: FtpReplies | None,
    alone: bool,
) -> None:
    """Ready ``curl`` for the request of ``stream``; ``replies``: FTP's or SFTP's
    (whose range is asked by REST, not a header), else None; ``alone``: a connection
    of its own (see ``one_connection``)."""
    configure(curl, url, config, headers, options)
    if replies is not None:  # the replies (or SFTP's stat) make the head
        stream.head.ftp = replies
        set_range(curl, stream.start, stream.end)
    curl.setopt(pycurl.HEADERFUNCTION, stream.head.lines.append)
    curl.setopt(pycurl.WRITEFUNCTION, on_write, use_memoryview=True)
    one_connection(curl, alone)


async def transfer(multi: Any, curl: Any, stream: Stream) -> tuple[int, str]:
    """The transfer: libcurl's code and message (0 and "" when it ended well).  One its
    rival overtook (``engine._download.tail``) ends here as if it had ended well."""
    running = stream.transfer = multi.add_handle(curl)
    try:
        await running
    except asyncio.CancelledError:
        if stream.stop is not Stop.OVERTAKEN or being_cancelled():
            raise
    except pycurl.error as exc:
        return int(exc.args[0]), str(exc.args[1])
    finally:
        stream.transfer = None
    return 0, ""


async def stat(
    url: str,
    config: TransferConfig,
    options: RequestOptions,
    host: str,
    rank: Callable[[], int],
) -> tuple[str, int | None] | TransferError:
    """SFTP's stat: (time, size) of the file, size None when libcurl could not tell
    (an empty file reads as one of unknown size: one unranged read to its end).
    A failure a retry may cure is returned; any other is raised."""
    multi, pool, slots = multi_for_loop()
    await slots.take(host, rank())
    curl = pool.take()
    try:
        configure(curl, url, config, [], options)
        curl.setopt(pycurl.NOBODY, 1)
        unplain(curl)
        await multi.perform(curl)
    except pycurl.error as exc:
        err, transient = curl_error(exc.args[0], exc.args[1], url)
        if not transient:
            raise err from None
        return err
    else:
        size = int(curl.getinfo(pycurl.CONTENT_LENGTH_DOWNLOAD_T))
        return file_time(curl), size if size >= 0 else None
    finally:
        slots.give(host)
        pool.give(curl)
