"""Operations the command line finds again: unfinished, failed (their data kept), by prefix.

A download that fails keeps its partial data and control file, and stays listed as
failed with its reason until it is canceled or the retention time passes
(``--keep-failed``, ``BGTRANSFER_KEEP_FAILED``, 7 days by default).  Running the same
command again continues it; so does a new URL for the same file, when the server
still serves the same content: the size and the validators (ETag, Last-Modified)
the control file keeps are checked on every response, so a different content starts
over instead of being mixed in.  Data kept without a validator cannot prove that,
and a new URL for it is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    DownloadOperation,
    InvalidRequestError,
)
from engine._disk.core import RangeFile, peek
from engine._ops.masking import mask_url
from engine.errors import ControlFileError, ResultFileInUseError, StorageError

S = BackgroundTransferStatus

DEFAULT_KEEP = "7d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def keep_seconds(text: str | None) -> float:
    """``--keep-failed``'s DURATION (``30m``, ``12h``, ``7d``, plain seconds), else
    ``BGTRANSFER_KEEP_FAILED``'s, else 7 days."""
    spec = text if text is not None else os.environ.get("BGTRANSFER_KEEP_FAILED", DEFAULT_KEEP)
    found = _DURATION.match(spec)
    if found is None:
        raise InvalidRequestError(
            f"--keep-failed {spec!r}: expected a duration such as 30m, 12h or 7d"
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def expire(d: BackgroundDownloader, keep: float) -> None:
    """Remove the failed operations and forget the ended ones older than ``keep``."""
    d.expire(keep)


def unfinished(d: BackgroundDownloader) -> list[DownloadOperation]:
    """Every operation not ended: current ones, then the failed ones kept."""
    return d.get_current_downloads(include_groups=True) + d.get_failed_downloads()


def by_result(d: BackgroundDownloader) -> dict[str, DownloadOperation]:
    """The unfinished operations by result file, as an absolute path str; a current
    one before a failed one of the same file (the API may have made it since)."""
    ops = d.get_failed_downloads() + d.get_current_downloads()
    return {os.fspath(op.result_file): op for op in ops}


def find(d: BackgroundDownloader, prefix: str) -> DownloadOperation:
    """The one unfinished operation whose GUID starts with ``prefix`` (as git takes a
    commit's); refused when none or several do."""
    wanted = prefix.strip().lower()
    if not wanted:
        raise InvalidRequestError("an operation's GUID (or its first characters) is needed")
    found = [op for op in unfinished(d) if str(op.guid).startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidRequestError(f"no operation {prefix} in {d.state_dir} (bgtransfer list)")
    raise InvalidRequestError(
        f"{prefix} names {len(found)} operations: give more of the GUID (bgtransfer list)"
    )


def _validated(result: Path) -> bool | None:
    """Whether the control file of ``result`` holds a validator; None without one."""
    try:
        found = peek(result)
        if found is None:
            return None
        with RangeFile(result, found[0], found[1], create=False) as rf:
            return bool(rf.etag or rf.last_modified)
    except (ControlFileError, StorageError):
        return None  # damaged: the engine starts it over, nothing is mixed


def point_at(op: DownloadOperation, url: str) -> DownloadOperation | None:
    """Let ``op`` continue from ``url`` (a new URL for its file); None when it had not
    started (the caller makes a new one: nothing of the old URL is kept)."""
    if op.requested_uri == url:
        return op
    if op.status is S.IDLE:
        op.cancel()
        return None
    if _validated(op.result_file) is False:
        raise InvalidRequestError(
            f"{op.result_file} is being downloaded from {mask_url(op.requested_uri)}, and "
            "its partial data has no validator (ETag, Last-Modified) to show that the new "
            f"URL serves the same content (bgtransfer cancel {str(op.guid)[:8]} first)"
        )
    try:
        if op.status is S.RUNNING:  # left running by a process that was killed
            op.pause()
        op.requested_uri = url
    except ResultFileInUseError:
        raise InvalidRequestError(
            f"{op.result_file} is being downloaded by another process from "
            f"{mask_url(op.requested_uri)} (bgtransfer cancel {str(op.guid)[:8]} first)"
        ) from None
    return op
