"""What each ``bgtransfer`` command does, through the public API only.

Downloads are started with the blocking API (``start``/``attach`` + ``wait``), never
by awaiting ``start_async``: cancelling an awaiting task cancels its download, and a
Ctrl-C must pause instead, so that running the command again resumes.  ``mirror``
runs as one bulk job (``engine.bulk``): small files over the lean path, large ones
as operations, driven on the engine's loop.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    DownloadOperation,
    InvalidRequestError,
    TransferError,
)
from engine._disk.checksum import parse
from engine._disk.core import CONTROL_SUFFIX
from engine._disk.trusted import check_folder
from engine._ops.validate import host_of
from engine.bulk import Failure, Todo, already_complete, go_on
from engine.cli.kept import by_result, expire, find, keep_seconds, point_at, unfinished
from engine.cli.login import credential, hosts_under_way, with_limits
from engine.cli.names import Entry, iter_list, output_path, split_login
from engine.cli.streamed import good, one_login, read_whole, unlogged, whole
from engine.cli.views import LOOK_EVERY, FileView, MirrorView, Waits
from engine.cli.words import describe, say
from engine.config import TransferConfig

S = BackgroundTransferStatus
Distribute = Callable[[argparse.Namespace, list[Entry], list[tuple[str, str]]], int]
"""``mirror --cluster``: runs the checked list on a cluster, returns the exit status."""


class Interrupted(Exception):
    """Ctrl-C: the running operations were paused, to be resumed by running it again."""

    def __init__(self, ops: list[DownloadOperation] | None = None) -> None:
        super().__init__("interrupted")
        self.ops = ops or []

    def starting_over(self) -> list[DownloadOperation]:
        """The paused ones whose server does not resume (no ranges, or no size): their
        next run starts from zero."""
        out = []
        for op in self.ops:
            info = op.get_response_information()
            if info is not None and not info.is_resumable and op.status is not S.COMPLETED:
                out.append(op)
        return out


def downloader(
    args: argparse.Namespace,
    found: Iterable[tuple[str, str] | None] = (),
    hosts: Iterable[str] = (),
) -> BackgroundDownloader:
    """The downloader of this command: its state directory, connections, headers, time
    bounds, and the login of ``--user``, of the URLs (``found``: what ``split_login``
    took out of each) or of a netrc file for ``hosts``; one login a command."""
    d = BackgroundDownloader(
        state_dir=args.state_dir,
        max_connections_per_file=getattr(args, "connections", "auto"),
        server_credential=credential(args, found, hosts),
        config=with_limits(args, _tls_config(args)),
        durability=getattr(args, "durability", None),
    )
    expire(d, keep_seconds(getattr(args, "keep_failed", None)))
    if args.command == "mirror":
        d.max_bytes_per_second = args.limit_rate  # the total; get's limits its one file
    for header in getattr(args, "header", []):
        name, sep, value = header.partition(":")
        if not sep:
            raise InvalidRequestError(f"bad header {header!r}: expected 'Name: value'")
        d.set_request_header(name.strip(), value.strip())
    return d


def _tls_config(args: argparse.Namespace) -> TransferConfig | None:
    """``--cacert FILE`` and ``--capath DIR``, else what curl reads from the environment:
    ``CURL_CA_BUNDLE``, then ``SSL_CERT_DIR`` and ``SSL_CERT_FILE``."""
    ca_file, ca_path = getattr(args, "cacert", None), getattr(args, "capath", None)
    if ca_file is None and ca_path is None:
        ca_file = os.environ.get("CURL_CA_BUNDLE") or None
        if ca_file is None:
            ca_path = os.environ.get("SSL_CERT_DIR") or None
            ca_file = os.environ.get("SSL_CERT_FILE") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InvalidRequestError(f"{ca_file}: no such CA certificate file")
    if ca_path is not None and not os.path.isdir(ca_path):
        raise InvalidRequestError(f"{ca_path}: no such CA certificate directory")
    if ca_file is None and ca_path is None:
        return None
    return TransferConfig(
        ca_file=os.path.abspath(ca_file) if ca_file else None,
        ca_path=os.path.abspath(ca_path) if ca_path else None,
    )


def follow(
    d: BackgroundDownloader, ops: list[DownloadOperation], quiet: bool
) -> list[TransferError]:
    """Drive operations to their end under a progress view: start new ones, let the
    ones found in the state directory go on; the errors they ended with."""
    view = FileView(quiet)
    try:
        for op in ops:
            view.watch(op)
            if op.status is S.IDLE:
                op.start(view.update)
            else:
                go_on(op, view.update)
        return wait_all(ops, Waits(d.free_space_reserve))
    finally:
        view.close()


def wait_all(ops: list[DownloadOperation], waits: Waits) -> list[TransferError]:
    """Wait for every operation, telling what they wait for (``Waits``); pause the
    running ones on Ctrl-C (Interrupted)."""
    errors = []
    try:
        for op in ops:
            while True:
                try:
                    op.wait(LOOK_EVERY)
                except TransferError as exc:  # before TimeoutError: it may be one too
                    errors.append(exc)
                except TimeoutError:
                    waits.look(ops)
                    continue
                break
    except KeyboardInterrupt:
        pause_all(ops)
        raise Interrupted(ops) from None
    return errors


def pause_all(ops: list[DownloadOperation]) -> None:
    for op in ops:
        if op.status in (S.RUNNING, S.IDLE) and op.method == "GET":
            with contextlib.suppress(TransferError):  # it ended meanwhile
                op.pause()


# -- get ---------------------------------------------------------------------------------
def get(args: argparse.Namespace) -> int:
    split = [split_login(u) for u in args.url]
    url, mirrors = split[0][0], [u for u, _ in split[1:]]
    d = downloader(args, [login for _, login in split], [host_of(u) for u, _ in split])
    output = output_path(args.output, url, create=args.create_dirs)
    if args.checksum:
        parse(args.checksum)  # a bad spec is bad usage, before anything starts
    op = by_result(d).get(os.fspath(output))
    if op is not None:
        op = point_at(op, url)  # the same URL, or a new one for the same content
    if op is None:
        op = d.create_download(url, output, sources=mirrors)
    if args.checksum:
        op.expected_checksum = args.checksum
    op.max_bytes_per_second = args.limit_rate
    errors = follow(d, [op], args.quiet)
    if errors:
        if args.debug:
            raise errors[0]
        say(f"error: {describe(errors[0], op)}")
        return 1
    if not args.quiet:
        print(op.result_file)
    return 0


# -- mirror ------------------------------------------------------------------------------
def mirror(args: argparse.Namespace, on_cluster: Distribute | None = None) -> int:
    """Download every URL of the list into a folder, here, or through ``on_cluster``
    with ``--cluster`` (given by the caller: the cluster's modules build on this one)."""
    if args.parallel < 1:  # as -c is refused out of range: not made 1 without a word
        raise InvalidRequestError(f"-j/--parallel must be at least 1, not {args.parallel}")
    target = os.path.abspath(args.dir)
    check_folder(target)  # before anything is made, read or removed in it
    if os.path.lexists(target) and not os.path.isdir(target):
        raise InvalidRequestError(f"{target}: not a directory")
    if getattr(args, "host_connections", None) is not None and not args.cluster:
        raise InvalidRequestError("--host-connections goes with --cluster")
    items = iter_list(args.input)  # each bad line told as it is read
    bad = [0]
    entries: Iterable[Entry]
    hosts: Iterable[str] = ()
    if getattr(args, "cluster", None) or read_whole(args):
        entries, logins = whole(items, bad)
        empty = not entries
        if getattr(args, "cluster", None) and not empty:
            if on_cluster is None:
                raise InvalidRequestError("--cluster is not available here")
            return on_cluster(args, entries, logins) or (1 if bad[0] else 0)  # bad lines: 1
        hosts = (host_of(entry.url) for entry in entries)
    else:  # streamed: the first file starts at once, and no line is kept
        stream = good(items, bad)
        first = next(stream, None)
        empty = first is None
        entries, logins = [], []
        if first is not None:
            first, login = unlogged(first)
            logins = [login] if login is not None else []
            ignored = getattr(args, "user", None) is not None  # -u wins, as for a whole list
            rest = one_login(stream, login, bad, args.input, ignored)
            entries = itertools.chain([first], rest)
    if empty:
        if bad[0]:
            return 1
        raise InvalidRequestError(f"{args.input}: no URL in the list")
    os.makedirs(target, exist_ok=True)
    d = downloader(args, logins, hosts)
    started = time.monotonic()
    done = mirror_files(
        d, entries, target, args.parallel, lambda n, skipped: MirrorView(args.quiet, n, skipped)
    )
    count, size, skipped = done.downloaded, done.size, done.skipped
    failed, refused = done.failed, done.refused
    took = time.monotonic() - started
    print(
        f"{count} downloaded, {skipped} already complete, {len(failed) + len(refused)} failed"
        f"{f', {bad[0]} bad {lines(bad[0])}' if bad[0] else ''}; "
        f"{size / 1e6:.1f} MB in {took:.1f} s ({size / max(took, 1e-9) / 1e6:.0f} MB/s)",
        file=sys.stderr,
    )
    for _, line in refused:
        say(line)
    for failure in failed:
        detail = describe(failure.error, failure, args.debug)
        name = os.path.basename(failure.result_file)
        about = "" if failure.result_file in detail else f"{name}: "
        say(f"{about}{detail}")
    if bad[0]:
        say(f"{bad[0]} bad {lines(bad[0])} in {args.input} skipped (see above)")
    return 1 if failed or refused or bad[0] else 0


def lines(count: int) -> str:
    return "line" if count == 1 else "lines"


@dataclasses.dataclass
class Mirrored:
    """What ``mirror_files`` did: files and bytes downloaded, files found complete,
    and the failures (no list of every file: a list of millions stays flat)."""

    downloaded: int
    size: int
    skipped: int
    failed: list[Failure]
    refused: list[tuple[DownloadOperation | None, str]]
    """Files whose kept data is of another URL and cannot be proved the same content."""


def mirror_files(
    d: BackgroundDownloader,
    entries: Iterable[Any],
    target: str,
    parallel: int,
    view: Callable[[int, int], MirrorView],
    continue_found: bool = False,
    *,
    lean: bool = True,
) -> Mirrored:
    """The mirror itself, callable from Python (a cluster's worker runs a shard with
    it): every entry (``url``, ``name``, ``checksum``, ``mirrors``) into the existing
    folder ``target``, up to ``parallel`` at a time, under ``view(files, skipped)``,
    as one bulk job of ``d`` (``engine.bulk``) named after the folder.  The entries
    are read as files finish, never all at once.

    A file already there (and matching its checksum) is skipped; an operation of
    ``d`` still unfinished goes on.  A control file that no operation of ``d`` knows
    is replaced, unless ``continue_found``: only a caller whose folder can hold
    nothing but this list's files (a cluster's staging folder, named by a hash of
    its lines) may continue it, since without validators a control file cannot tell
    that it is of the same URL.  ``lean=False``: every file a full operation (see
    ``create_downloads``)."""
    current = by_result(d)
    present = set(os.listdir(target))  # one read of the folder, not a stat a name
    refused: list[tuple[DownloadOperation | None, str]] = []
    seen = [0]
    shown = view(len(entries) if isinstance(entries, list) else 0, 0)
    lean_view = shown.ended if shown.shown else None  # quiet: nothing a file
    bulk = d.create_downloads(
        (),
        job=f"mirror:{target}",
        parallel=parallel,
        progress=shown.update if shown.shown else None,
        file_ended=lean_view,
        watch=shown.watch,
        look=Waits(d.free_space_reserve).look,
        lean=lean,
    )

    folder = os.path.join(target, "")  # names are relative, checked by the list's reader

    def plan() -> Iterator[Todo]:
        for entry in entries:
            seen[0] += 1
            path = folder + entry.name  # a str: a Path, or os.path.join, costs more
            op = current.get(path)
            if op is None and entry.name in present and already_complete(path, entry.checksum):
                bulk.skip(path, entry.url, entry.checksum)
                shown.skipped(1)
                continue
            if op is not None and op.requested_uri != entry.url:
                try:
                    op = point_at(op, entry.url)  # as get does: the same content, a new URL
                except InvalidRequestError as exc:
                    refused.append((op, str(exc)))
                    continue
            found = continue_found and entry.name + CONTROL_SUFFIX in present
            yield entry.url, path, entry.checksum, getattr(entry, "mirrors", ()), op, found
        shown.counted(seen[0])

    try:
        try:
            done = bulk.run(plan())
        except KeyboardInterrupt:
            raise Interrupted(bulk.paused) from None
        shown.finished(done.downloaded + done.skipped, seen[0])
    finally:
        shown.close()
    if not done.failed and not refused and not bulk.paused:
        bulk.forget()  # every file is under its name: nothing left to list or resume
    return Mirrored(done.downloaded, done.size, done.skipped, done.failed, refused)


# -- list, resume, cancel ----------------------------------------------------------------
def resume(args: argparse.Namespace) -> int:
    """One operation (a GUID or its first characters), or every unfinished one with
    ``--all``, failed ones too; ``--url`` continues one from a new URL."""
    d = downloader(args, hosts=hosts_under_way(args))
    if args.all == bool(args.guid):
        raise InvalidRequestError("resume takes one GUID (or its first characters) or --all")
    if args.url and args.all:
        raise InvalidRequestError("--url goes with one GUID, not --all")
    ops = unfinished(d) if args.all else [find(d, args.guid)]
    if args.url:
        url, login = split_login(args.url)
        if login is not None:
            raise InvalidRequestError("a password goes in -u/--user, not in --url")
        op = point_at(ops[0], url)
        if op is None:  # it had not started: a new one from the new URL
            op = d.create_download(url, ops[0].result_file)
        ops = [op]
    if args.limit_rate is not None:
        for op in ops:
            op.max_bytes_per_second = args.limit_rate
    errors = follow(d, ops, args.quiet)
    by_guid = {op.guid: op for op in ops}
    for exc in errors:
        if args.debug:
            raise exc
        say(f"error: {describe(exc, by_guid.get(exc.guid) if exc.guid else None)}")
    return 1 if errors else 0


def cancel(args: argparse.Namespace) -> int:
    op = find(downloader(args), args.guid)
    op.cancel()
    if not args.quiet:
        print(f"{op.guid} canceled ({op.result_file})", file=sys.stderr)
    return 0


# -- demo ----------------------------------------------------------------------------------
def demo(args: argparse.Namespace) -> int:
    """Serve a generated file on loopback and download it: no URL needed to see it work."""
    import tempfile  # the demo's only (3 ms of start-up for every other command)

    from engine._net.loopback import LoopbackServer  # the demo's server, not an engine call

    body = os.urandom(1 << 20) * max(1, args.size_mib)
    server = LoopbackServer(body)
    try:
        with tempfile.TemporaryDirectory(prefix="bgtransfer-demo-") as tmp:
            out = Path(tmp) / "demo.bin"
            print(f"serving {args.size_mib} MiB at {server.url}", file=sys.stderr)
            d = BackgroundDownloader(
                state_dir=Path(tmp) / "state", max_connections_per_file=args.connections
            )
            op = d.create_download(server.url, out)
            start = time.perf_counter()
            errors = follow(d, [op], args.quiet)
            took = time.perf_counter() - start
            if errors:
                raise errors[0]
            ok = out.read_bytes() == body
            print(
                f"downloaded {len(body) / 2**20:.0f} MiB in {took:.2f} s "
                f"({len(body) / took / 1e6:.0f} MB/s over {args.connections} connections), "
                f"{'byte-exact' if ok else 'MISMATCH'}"
            )
            return 0 if ok else 1
    finally:
        server.close()
