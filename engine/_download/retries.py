"""What a request that did not end well means: back off and retry, restart, or fail.

Theory of operation
-------------------
A request that ended without its bytes (a reset, a stall, a 5xx, a 429, a range the
server got wrong) is retried after a back-off that doubles with each failure in a
row, jittered, never shorter than a Retry-After the server sent; progress ends the
row.  After ``config.retries`` failures in a row the last error is raised, with the
attempts and the time they took.  A change of content, or ranges ignored where they
worked, restarts the whole file (``Restart``); an error no retry cures (a 404, a
refused certificate, a disk that failed) is raised at once.  With several sources a
fault costs its source rather than the download: the source is dropped when it
disagrees, fails for good or keeps failing, and the download fails only when none is
left (``engine._download.sources``).  A download makes a ``Retries`` at its first
failure: most never do.
"""

from __future__ import annotations

import asyncio

from engine._download.adaptive import Width
from engine._download.checks import refusal
from engine._download.request import REFUSED
from engine._download.segments import Stop, Stream
from engine._download.sources import Sources
from engine._net.transport import curl_error
from engine.config import TransferConfig
from engine.errors import TransferError, TransportError
from engine.web_error import WebErrorStatus


class Restart(Exception):
    """The file starts over: its content changed (``changed``), or ranges are ignored."""

    def __init__(self, changed: bool) -> None:
        super().__init__("restart")
        self.changed = changed


class Retries:
    """The failures in a row of one download, and what each one means."""

    failures = 0
    """Failures in a row (progress resets the count)."""
    last: TransferError | None = None
    """The error of the last failure."""

    def __init__(
        self, url: str, config: TransferConfig, sources: Sources, width: Width | None
    ) -> None:
        self.url = url
        self.config = config
        self.sources = sources
        self.width = width
        """The adaptive connection count, told when the server asks for fewer."""
        self.since = 0.0
        """Loop time of the first of the failures in a row."""

    async def settle(self, stream: Stream, code: int, message: str) -> None:
        """Back off, or raise what the fault of ``stream`` (libcurl's ``code`` and
        ``message``) means: ``Restart``, or the error that ends the download."""
        if not self.sources.several:
            await self._settle(stream, code, message)
            return
        source = stream.source
        assert source is not None
        try:
            await self._settle(stream, code, message)
        except Restart as again:
            why = stream.why or ("content changed" if again.changed else "ranges are ignored")
            if not self.sources.drop(source, why):
                raise
        except TransferError as exc:
            if not self.sources.drop(source, str(exc)):
                raise
            self.failures = 0  # the other sources start afresh
        else:
            source.failures += 1
            err = self.last
            gone = source.failures > self.config.retries and err is not None
            if gone and err is not None and not self.sources.drop(source, str(err)):
                raise err

    async def _settle(self, stream: Stream, code: int, message: str) -> None:
        stop = stream.stop
        if stop is Stop.RANGE_END or (code == 0 and stop is None):
            # a clean end with nothing new for a range still open
            err: TransferError = TransportError(
                f"{self.url}: response ended before the range was complete",
                web_error_status=WebErrorStatus.CONNECTION_ABORTED,
            )
            await self.back_off(err, None)
            return
        if stop in (Stop.CHANGED, Stop.NO_RANGES):
            raise Restart(changed=stop is Stop.CHANGED)
        if stop in (Stop.STORAGE, Stop.UNSUPPORTED):
            assert stream.error is not None
            raise stream.error
        if stop in (Stop.BAD_RANGE, Stop.HTTP):
            head = stream.head
            if self.width is not None and head.status in (429, 503):
                self.width.busy()  # the server asks for fewer
            err, transient = refusal(stop, head, self.url)
            if not transient:
                raise err
            await self.back_off(err, head.retry_after if stop is Stop.HTTP else None)
            return
        err, transient = curl_error(code, message, self.url)
        if not transient:
            raise err
        if self.width is not None and code == REFUSED:
            self.width.busy()
        await self.back_off(err, None)

    async def back_off(self, err: TransferError, retry_after: float | None) -> None:
        """Back off (exponential, jittered, Retry-After honoured) or give up after N in a row."""
        self.failures += 1
        now = asyncio.get_running_loop().time()
        if self.failures == 1:
            self.since = now
        self.last = err
        config = self.config
        if self.failures > config.retries:
            err.attempts, err.retried_for = self.failures, now - self.since
            raise err
        delay = min(config.backoff_max, config.backoff_base * 2 ** (self.failures - 1))
        import random  # here only: a failure's jitter, not every command's start-up

        delay *= random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, config.backoff_max * 10))
        await asyncio.sleep(delay)


def no_source(sources: Sources) -> TransportError:
    """The error of a download whose every source was dropped, with the reasons."""
    reasons = "; ".join(f"{url}: {why}" for url, why in sources.reasons().items())
    return TransportError(
        f"every source was dropped ({reasons})", web_error_status=WebErrorStatus.UNKNOWN
    )
