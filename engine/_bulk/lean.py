"""The lean path of a bulk job: a small file as one request on a pooled handle.

See ``engine._bulk.runner`` for the theory; this is its half for small files (the
request, the judgement of its answer, the write, the waits and the hand-over to a
full operation), ``Runner`` the other (the list, the slots, full operations).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import random
from pathlib import Path
from typing import Any

import pycurl

from engine._bulk.answer import EMPTY, PROMOTE, WHOLE, Piece, Refused, judge, lie, whole
from engine._bulk.gate import NO_NETWORK
from engine._bulk.hooks import Failure, Held, Hooks
from engine._bulk.table import CANCELED, JobTable
from engine._disk.checksum import new_hash, parse
from engine._disk.files import filer
from engine._disk.tuning import Tuning
from engine._net.ratelimit import Budget
from engine._net.transport import configure, curl_error, http_error
from engine._runtime.loop import running_loop
from engine.errors import IntegrityError, TransferError, TransportError
from engine.values import BackgroundTransferStatus

S = BackgroundTransferStatus
_RUNNING, _COMPLETED, _ERROR = S.RUNNING.value, S.COMPLETED.value, S.ERROR.value
_CODE, _LENGTH = pycurl.RESPONSE_CODE, pycurl.CONTENT_LENGTH_DOWNLOAD_T
_WRITE, _MAX, _URL = pycurl.WRITEFUNCTION, pycurl.MAXFILESIZE_LARGE, pycurl.URL
_TOO_BIG = pycurl.E_FILESIZE_EXCEEDED

LEAN_MEMORY = 64 << 20
"""Bytes the small files in flight may hold in memory, in all (``lean_limit``)."""
LEAN_LEAST = 256 << 10
"""The smallest range a small file asks for, however many run at once."""


def lean_limit(first_request: int, parallel: int) -> int:
    """Bytes a small file asks for with ``parallel`` in flight: the first request's
    size, or the share of ``LEAN_MEMORY`` of each (a power of two, so that a promoted
    file's first range is whole blocks of its bitmap) when that is less.  A mirror of
    large files holds each file's first range in memory until it is promoted: at
    ``-j 64`` a 4 MiB range each would make 256 MiB; larger files start their full
    operation sooner, too."""
    share = LEAN_MEMORY // max(1, parallel)
    return min(first_request, max(LEAN_LEAST, 1 << (share.bit_length() - 1)))


class Lean:
    """A small file in flight."""

    __slots__ = (
        "body",
        "curl",
        "parts",
        "path",
        "ready",
        "since",
        "sum",
        "timer",
        "tries",
        "url",
        "waits",
    )

    curl: Any
    parts: list[bytes]
    """The body as libcurl handed it over, a piece a call: joined once, at its end (a
    ``bytearray`` grown by each piece copied a 4 MiB body about thirty times over)."""
    body: bytes
    ready: bool
    """Held by the gate with its body arrived (to write), not before its request."""
    waits: BackgroundTransferStatus
    """Why the gate holds it."""
    timer: asyncio.TimerHandle | None
    since: float
    """When the first of the failures in a row happened."""

    def __init__(self, url: str, path: str, checksum: str | None) -> None:
        # the other fields are set by _send (and since by _retry): a file pays for each
        self.url = url
        self.path = path
        self.sum = checksum
        self.tries = 0


class LeanPath(abc.ABC):
    """The small files of one run in flight, and what they share (see the module)."""

    def __init__(self, hooks: Hooks, table: JobTable, parallel: int) -> None:
        self.hooks = hooks
        self.table = table
        self.downloaded = 0
        self.size = 0
        self.failed: list[Failure] = []
        self.canceled = 0
        self._busy = 0  # slots taken: transfers, back-offs, waits and full operations
        self._writing = 0  # bodies handed to the filer, not written yet
        self._parallel = parallel
        self._flying: dict[str, Lean] = {}
        self._cancel: set[str] = set()
        self._free: list[Any] = []
        self._limit = lean_limit(hooks.config.first_request, parallel)
        self._gate = hooks.gate
        self._held: list[Lean] = []
        """Files waiting for the gate (before their request, or with a body to write)."""
        self._look: asyncio.TimerHandle | None = None
        self._durable = hooks.config.durable
        self._tuning = Tuning.of(hooks.config)
        self._multi: Any = None
        self._filer = filer()
        self._budget = hooks.budget or Budget()
        self._stopped = False
        self._more = True
        self._drained: asyncio.Future[None] | None = None  # set once stopped and written
        self._loop: asyncio.AbstractEventLoop | None = None

    @abc.abstractmethod
    def _fill(self) -> None:
        """Start files while slots are free (``Runner``)."""

    def held(self) -> list[Held]:
        """The small files the gate holds, as a look sees them."""
        return [Held(f.waits, Path(f.path), len(f.body) if f.ready else 0) for f in self._held]

    @abc.abstractmethod
    def _promote(self, f: Lean, piece: Piece | None) -> None:
        """A full operation takes ``f`` over (``Runner``)."""

    def _send(self, f: Lean) -> None:
        f.timer = None
        url = f.url
        https = url[4] == "s"
        if self._free and self._free[-1].bgt_https is https:
            curl = self._free.pop()
            curl.setopt(_URL, url)  # every other option stays as configure set it
            curl.bgt_lines.clear()
        else:
            curl = self._free.pop() if self._free else pycurl.Curl()
            hooks = self.hooks
            configure(curl, url, hooks.config, hooks.headers, hooks.request)
            # The first request's range: a larger file sends no more (promoted, it keeps
            # what came); a 200 past it (ranges ignored) stops at the limit.
            curl.setopt(pycurl.RANGE, f"0-{self._limit - 1}")
            curl.setopt(_MAX, self._limit)
            lines = curl.bgt_lines = []  # the heads, read only when a 206 is not plain
            curl.setopt(pycurl.HEADERFUNCTION, lines.append)
            curl.bgt_https = https
        parts = f.parts = []
        curl.setopt(_WRITE, parts.append)
        f.curl = curl
        self._budget.pace(curl, self._multi, functools.partial(_taken, parts))
        self._multi.add_handle(curl).add_done_callback(functools.partial(self._ended, f))

    def _ended(self, f: Lean, transfer: asyncio.Future[Any]) -> None:
        """The transfer of ``f`` ended: check it, then write it, retry, promote or fail."""
        curl, f.curl = f.curl, None
        self._budget.detach(curl)
        if self._stopped:  # Ctrl-C: the run is over (and its handles closed)
            return
        status = curl.getinfo(_CODE)
        length = curl.getinfo(_LENGTH)
        self._free.append(curl)
        if transfer.cancelled():
            self._lean_over(f, CANCELED)
            return
        exc = transfer.exception()
        parts = f.parts
        body = f.body = b"".join(parts)  # (one piece: itself, no copy)
        parts.clear()  # (the pooled handle keeps the list, not its pieces)
        if exc is not None:
            code, message = exc.args[0], exc.args[1]
            if code == _TOO_BIG:
                curl.setopt(_WRITE, _dropped)
                self._promote(f, None)
                return
            err, transient = curl_error(code, message, f.url)
            if not transient:
                self._fail(f, err)
            elif self._gate is not None and self._gate.offline(f.url):
                self._hold(f, NO_NETWORK)  # no network: it waits for one, as a full one
            else:
                self._retry(f, err, None)
            return
        if status != 200 and (
            status != 206 or length != len(body) or not whole(curl.bgt_lines, length)
        ):  # (a 200, or a plain 206 of the whole file, in a few C calls: most files)
            self._answer(f, status, curl)
            return
        if length >= 0 and length != len(body):
            err = lie(f.url, f"{len(body)} bytes where Content-Length said {length}")
            self._retry(f, err, None)
            return
        self._keep(f)

    def _answer(self, f: Lean, status: int, curl: Any) -> None:
        """Any response but a 200 or a plain 206 of the whole file."""
        if status in (206, 416):
            answer = judge(curl.bgt_lines, len(f.body), self._limit, f.url)
            if type(answer) is Refused:
                err = answer.error
                self._retry(f, err, None) if answer.transient else self._fail(f, err)
            elif type(answer) is Piece or answer is PROMOTE:
                curl.setopt(_WRITE, _dropped)  # the pooled handle lets go of the body
                self._promote(f, answer if type(answer) is Piece else None)
            else:
                if answer is EMPTY:
                    f.body = b""
                assert answer is WHOLE or answer is EMPTY
                self._keep(f)
            return
        if status < 300:
            self._fail(f, lie(f.url, f"HTTP {status} where the file was asked for"))
            return
        herr, transient = http_error(status, f.url)
        if transient:
            self._retry(f, herr, curl.getinfo(pycurl.RETRY_AFTER) or None)
        else:
            self._fail(f, herr)

    def _keep(self, f: Lean) -> None:
        """A body judged the whole file: checked against its checksum, then handed to
        the filer if it fits above the reserve (else it waits for room)."""
        if f.sum is not None and not self._matches(f):
            return
        body = f.body
        gate = self._gate
        if gate is not None and not gate.take(f.path, len(body)):
            self._hold(f, S.PAUSED_SYSTEM_POLICY, True)
            return
        try:
            written = self._filer.start(
                -1, f.path, body, 0, durable=self._durable, tuning=self._tuning, loop=self._loop
            )
        except TransferError as refused:
            self._fail(f, refused)
            return
        self._busy -= 1  # the slot's connection is free while the filer writes
        self._writing += 1
        written.add_done_callback(functools.partial(self._written, f, len(body)))
        self._fill()

    def _hold(self, f: Lean, why: BackgroundTransferStatus, ready: bool = False) -> None:
        """``f`` waits for the gate (its slot kept, its row saying why); ``ready``: its
        body arrived and waits to be written."""
        self._held.append(f)
        f.ready = ready
        f.waits = why
        self.table.change(f.path, why.value)
        if self._look is None:
            poll = self.hooks.config.poll_interval
            self._look = running_loop().call_later(poll, self._look_again)

    def _look_again(self) -> None:
        """Every ``poll_interval`` while files wait: those the gate lets go on go on."""
        self._look = None
        gate = self._gate
        held, self._held = self._held, []
        assert gate is not None
        for f in held:
            if f.ready:  # its body: written if it fits now, else held again
                self._keep(f)
                continue
            why = gate.blocked(f.url, f.path)
            if why is not None:
                self._hold(f, why)
                continue
            self.table.change(f.path, _RUNNING)
            self._send(f)

    def _matches(self, f: Lean) -> bool:
        assert f.sum is not None
        algo, digest = parse(f.sum)
        h = new_hash(algo)
        h.update(f.body)
        got = h.hexdigest()
        if got == digest:
            return True
        self._fail(f, IntegrityError(f"{f.path}: {algo} is {got}, expected {digest}"))
        return False

    def _written(self, f: Lean, size: int, written: asyncio.Future[None]) -> None:
        writing = self._writing
        self._writing = writing - 1
        path = f.path
        del self._flying[path]
        exc = None if written.cancelled() else written.exception()
        if exc is None:
            self.downloaded += 1
            self.size += size
            self.table.changed.append((_COMPLETED, size, None, None, self.table.job, path))
        else:
            err = exc if isinstance(exc, TransferError) else TransportError(str(exc))
            self.failed.append(Failure(f.path, f.url, err, None))
            self.table.change(f.path, _ERROR, 0, str(err))
        ended = self.hooks.ended
        if ended is not None:
            ended(size, exc is None)
        if self._stopped:
            self._drain()
            return
        if writing >= 4 * self._parallel or not self._more:  # else _ended pulled already
            self._fill()

    def _drain(self) -> None:
        """A stopped run waits for the bodies (and pieces) being written: the last one is."""
        if not self._writing and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _retry(self, f: Lean, err: TransferError, retry_after: float | None) -> None:
        """Back off (exponential, jittered, Retry-After honoured), or fail after
        ``config.retries`` tries in a row."""
        config = self.hooks.config
        now = running_loop().time()
        f.tries += 1
        if f.tries == 1:
            f.since = now
        if f.tries > config.retries:
            err.attempts, err.retried_for = f.tries, now - f.since
            self._fail(f, err)
            return
        delay = min(config.backoff_max, config.backoff_base * 2 ** (f.tries - 1))
        delay *= random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, config.backoff_max * 10))
        f.timer = running_loop().call_later(delay, self._send, f)

    def _fail(self, f: Lean, err: TransferError) -> None:
        self.failed.append(Failure(f.path, f.url, err, None))
        self._lean_over(f, _ERROR, str(err))

    def _lean_over(self, f: Lean, status: int, error: str | None = None) -> None:
        """``f`` ended without a file (failed or cancelled): its slot is free."""
        del self._flying[f.path]
        if status == CANCELED:
            self.canceled += 1
        self.table.change(f.path, status, 0, error)
        self._busy -= 1
        ended = self.hooks.ended
        if ended is not None and status != CANCELED:
            ended(0, False)
        self._fill()

    def _drop(self, curl: Any) -> None:
        """Stop a transfer; one that ended already (its callback still to run) is let be."""
        try:  # noqa: SIM105
            self._multi.remove_handle(curl)
        except RuntimeError:  # not registered any more: it ended meanwhile
            pass


def _taken(parts: list[bytes]) -> int:
    """Body bytes a small file's transfer took so far (what a rate limit counts)."""
    return sum(map(len, parts))


def _dropped(data: bytes) -> None:
    """The write callback a handle keeps while pooled after a promoted file (its next
    file sets its own): the promoted file's megabytes are not held by the pool."""
