"""``bgtransfer list``: the operations of the state directory, one a line under a header.

Columns: the shortest GUID prefix that names the operation (at least 8 characters,
as ``cancel``, ``resume`` and ``wait`` take it), its status (the API's name), its size, how
much of it is there, the result file, the URL (secrets masked) and, for one that
failed or waits on a web error, why.  ``--all`` adds the operations that ended
(completed, canceled) until the retention time forgets them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from engine import BackgroundDownloader, BackgroundTransferStatus, DownloadOperation
from engine._ops.masking import mask_url
from engine.cli.words import reason
from engine.downloader import EndedDownload

S = BackgroundTransferStatus

HEADER = ("ID", "STATUS", "SIZE", "DONE", "FILE", "URL", "REASON")


def size_text(n: int | None) -> str:
    """Bytes as a person reads them (binary units, as the progress bars show them)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_ids(guids: list[str]) -> dict[str, str]:
    """Each GUID's shortest prefix of 8 characters or more that no other one shares."""
    out = {}
    for guid in guids:
        n = 8
        while n < len(guid) and any(g != guid and g.startswith(guid[:n]) for g in guids):
            n += 1
        out[guid] = guid[:n]
    return out


def _row(op: DownloadOperation, short: str) -> tuple[str, ...]:
    p = op.progress
    total = p.total_bytes_to_receive or None
    done = f"{100 * p.bytes_received / total:.1f}%" if total else size_text(p.bytes_received)
    error = op.error
    why = reason(error, op.requested_uri) if error is not None else ""
    return (
        short,
        p.status.name,
        size_text(total),
        done,
        os.fspath(op.result_file),
        mask_url(op.requested_uri),
        why,
    )


def _ended_rows(ended_ops: list[EndedDownload], short: dict[str, str]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for ended in ended_ops:
        path = ended.result_file
        size = path.stat().st_size if ended.status is S.COMPLETED and path.is_file() else None
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ended.ended))
        rows.append(
            (
                short[str(ended.guid)],
                ended.status.name,
                size_text(size),
                "100.0%" if ended.status is S.COMPLETED else "-",
                os.fspath(path),
                mask_url(ended.requested_uri),
                f"ended {when}",
            )
        )
    return rows


def list_(args: argparse.Namespace, d: BackgroundDownloader) -> int:
    ops = d.get_current_downloads(include_groups=True) + d.get_failed_downloads()
    guids = [str(op.guid) for op in ops]
    ended = d.get_ended_downloads() if args.all else []
    short = short_ids(guids + [str(e.guid) for e in ended])
    rows = [_row(op, short[str(op.guid)]) for op in ops]
    if args.all:
        rows = _ended_rows(ended, short) + rows
    print_rows(rows, args)
    return 0


def print_rows(rows: list[tuple[str, ...]], args: argparse.Namespace) -> None:
    """The table under its header, or one line on stderr saying there is nothing."""
    if not rows:
        if not args.quiet:
            print("no operations" if args.all else "no operations in progress", file=sys.stderr)
        return
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    for row in [HEADER, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
