"""Tunables of a transfer, with the seed's defaults: connect 5 min, no response 2 min, 3 retries."""

from __future__ import annotations

import dataclasses
from typing import Literal

from engine.errors import InvalidRequestError

Durability = Literal["normal", "full"]
"""What a finished or interrupted download may rely on (see docs/durability.md).

``"normal"``: the data goes through the page cache and nothing waits for the disk; a
killed process loses nothing it counted, a power loss may cost what had not reached
the disk (never a wrong byte of a download that resumes), and a file finished just
before it may come back short or empty, as with curl or wget.  ``"full"``: a file is
on the disk before it appears under its name and before COMPLETED is reported."""

DURABILITY_LEVELS: tuple[Durability, ...] = ("normal", "full")

MAX_STAGE_SIZE = 64 << 20
"""The largest stage the C core takes (``RF_MAX_STAGE_SIZE``)."""
MAX_THREADS = 64
"""The most writer or sync threads the C core starts (``DIO_MAX_THREADS``,
``FL_MAX_SYNCERS``)."""


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """How one download uses the network; every field has the documented default."""

    connections: int = 8
    """Ranged connections per file (with ``adaptive``, the most it may use)."""
    adaptive: bool = False
    """Start with a few connections and add them while they raise the throughput
    (``engine._download.adaptive``); fewer after 429, 503 or a refused connection."""
    block_size: int = 1 << 20
    """Granularity of the bitmap and of the per-block hash."""
    first_request: int = 4 << 20
    """Bytes asked for by the first request: a small file costs one request."""
    chunk_size: int = 64 << 20
    """Largest range one request asks for; requests end cleanly, keeping connections alive."""
    min_split: int = 2 << 20
    """The smallest range a request asks for (requests shrink to it as the file fills)."""
    connect_timeout: float = 300.0
    response_timeout: float = 120.0
    """No byte for this long, once connected, aborts the request (libcurl's low-speed check)."""
    low_speed_limit: int = 1
    """Bytes per second below which a connection counts as stalled for response_timeout."""
    retries: int = 3
    """Transient failures in a row before the download fails; progress resets the count,
    except a request's that ended below ``low_speed_limit`` (a trickle stays a failure)."""
    max_time: float | None = None
    """Seconds a download may take from its start or resume, waits included (curl's
    ``--max-time``); past it, TransferTimeoutError.  None: no bound."""
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    buffer_size: int = 2 << 20
    """libcurl's receive buffer: how much one read from a socket may take.  libcurl
    still hands it to the C core 16 KiB at a time, but fewer, larger reads mean
    fewer passes of the loop a byte, which is what limits one fast file; past a few
    MiB a larger buffer gains nothing.  The multi handle shares one such buffer
    among its transfers, so its size does not grow with the number of files."""
    max_redirects: int = 10
    ca_file: str | None = None
    """A CA bundle to trust instead of the system's (TLS is always verified)."""
    ca_path: str | None = None
    """A directory of CA certificates (OpenSSL's hashed names, ``openssl rehash``) to
    trust instead of the system's."""
    durability: Durability = "normal"
    """``"normal"`` or ``"full"``, as SQLite's ``synchronous``: see ``Durability``."""
    direct_io: bool | None = None
    """Write whole pages of a file fetched over ranges with O_DIRECT, from the C core's
    writer threads, where the file system allows it: no page-cache copy, and nothing
    left to write back when the finished file is fsync'd (see csrc/dio.h).  None (the
    default): with ``durability="full"`` only.  Which is faster depends on the machine:
    on a VM whose host takes freed memory back, a page-cache write can cost more than
    the disk's."""
    durable_every: float = 5.0
    """Seconds between checkpoints while a download runs, made by the C core's threads,
    never waited for: ``"full"`` fdatasyncs the data, then the bitmap; ``"normal"``
    starts their write-back."""
    poll_interval: float = 2.0
    """Seconds between looks at the network, its cost and free disk (a paused operation
    resumes by itself within this long of its cause going away)."""
    free_space_reserve: int = 64 << 20
    """Free bytes to leave on the result's file system: below, PAUSED_SYSTEM_POLICY."""
    readahead_slack: int = 256 << 10
    """A reader's offset this close ahead of a connection is left to that connection."""
    ssh_private_key: str | None = None
    """SFTP: the private key file to log in with (else the credential's password)."""
    ssh_known_hosts: str = "~/.ssh/known_hosts"
    """SFTP: host keys to trust; a host not in it is refused (no trust on first use)."""
    stage_size: int = 64 << 10
    """Bytes the C core gathers in memory before a run goes to the page cache: pieces
    smaller than this are staged (libcurl hands them over 16 KiB at a time), runs end
    at its multiples, and a write to the page cache goes in pieces of it.  Larger page
    cache writes make the kernel build folios that large, which contends with the
    socket's receiving.  A power of two from 4 KiB to 64 MiB."""
    max_stage_size: int = 1 << 20
    """The largest run the C core's writer threads write at once: a run is a block,
    within ``[stage_size, max_stage_size]``.  Larger O_DIRECT writes keep a disk busy
    with fewer waits.  A power of two from ``stage_size`` to 64 MiB."""
    stage_memory: int = 16 << 20
    """Bytes the runs held for the writer threads may take, for every download of the
    process together, shared evenly by the files open: a small share means smaller
    runs, and past it pieces go straight to the page cache.  0 or more."""
    writer_threads: int = 4
    """Threads that write runs and checkpoints (1 to 64).  They serve the whole
    process, which keeps the most any download asked for."""
    sync_threads: int = 16
    """Threads that fsync finished small files (1 to 64); the process's, like
    ``writer_threads``."""

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise InvalidRequestError(
                f"durability must be one of {', '.join(DURABILITY_LEVELS)}, not {self.durability!r}"
            )
        _check_power_of_two("stage_size", self.stage_size, 4096, MAX_STAGE_SIZE)
        _check_power_of_two("max_stage_size", self.max_stage_size, self.stage_size, MAX_STAGE_SIZE)
        if not _is_int(self.stage_memory) or not 0 <= self.stage_memory < 1 << 63:
            raise InvalidRequestError(
                "stage_memory must be a number of bytes from 0 to 2**63 - 1, "
                f"not {self.stage_memory!r}"
            )
        for name in ("writer_threads", "sync_threads"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_THREADS:
                raise InvalidRequestError(f"{name} must be from 1 to {MAX_THREADS}, not {value!r}")

    @property
    def durable(self) -> bool:
        """Whether a file is on the disk before it is reported complete."""
        return self.durability == "full"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_power_of_two(name: str, value: int, least: int, most: int) -> None:
    if not _is_int(value) or not least <= value <= most or value & (value - 1):
        raise InvalidRequestError(
            f"{name} must be a power of two from {least} to {most} bytes, not {value!r}"
        )
