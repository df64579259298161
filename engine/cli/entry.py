"""The ``bgtransfer`` command (also ``python -m engine``): get, mirror, list, resume, cancel, demo.

Exit status 0 only when every file is complete (and verified where asked); 1 when a
download failed; 2 for bad usage; 130 after Ctrl-C (the downloads are paused: run
the same command again to resume).  Errors are one line on stderr each (a traceback
only with ``--debug``).  A reader of the output that goes away early (``| head``)
ends it quietly with 141, as SIGPIPE ends ``ls``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import InvalidRequestError, TransferError
from engine.cli.commands import (
    Interrupted,
    cancel,
    demo,
    downloader,
    get,
    mirror,
    resume,
)
from engine.cli.kept import DEFAULT_KEEP
from engine.cli.listing import list_
from engine.cli.names import Entry
from engine.cli.secrets import wipe_from_process_title
from engine.cli.words import describe, say
from engine.service import cli as service_cli


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit status 2, as for every other usage error."""
        self.exit(2, f"bgtransfer: {message}\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        """argparse's, given the width shutil would find: argparse imports shutil for
        it at every add_argument, 2 ms of each command's start-up."""
        factory: Callable[..., argparse.HelpFormatter] = self.formatter_class
        return factory(prog=self.prog, width=_columns() - 2)


def _columns() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or 80
    except ValueError:
        pass
    out = sys.__stdout__
    try:
        return (os.get_terminal_size(out.fileno()).columns if out else 0) or 80
    except (ValueError, OSError):
        return 80


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, help="where operations are kept")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and libcurl's own errors"
    )
    parser.add_argument(
        "--keep-failed",
        metavar="DURATION",
        help="how long a failed download keeps its partial data and stays listed "
        f"(30m, 12h, 7d...; default $BGTRANSFER_KEEP_FAILED, else {DEFAULT_KEEP})",
    )


def _trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="CA certificates (PEM) to trust instead of the system's "
        "(default $CURL_CA_BUNDLE, else $SSL_CERT_FILE)",
    )
    parser.add_argument(
        "--capath",
        metavar="DIR",
        help="a directory of CA certificates (openssl rehash) to trust (default $SSL_CERT_DIR)",
    )


class _Version(argparse.Action):
    """``--version``, looked up only when asked: importlib.metadata is a fifth of the
    start-up of every other command."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = f"bgtransfer {version('bgtransfer')}"
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "bgtransfer (not installed)"
        print(found)
        parser.exit(0)


_EPILOG = """exit status: 0 when every file is complete (and verified where asked), 1 when a
download failed, 2 for bad usage, 130 after Ctrl-C (143 SIGTERM, 129 SIGHUP): the
downloads are paused, run the same command again to resume."""


def _login(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-u",
        "--user",
        help="USER[:PASSWORD] for the server, kept in memory only; a password left out "
        "is read from $BGTRANSFER_PASSWORD, else --netrc, else asked on the terminal.  "
        "A password on the command line (here or in a URL) can be read by other local "
        "users until the command starts, when it is wiped from the process title: "
        "prefer one of the others",
    )
    parser.add_argument(
        "--netrc", action="store_true", help="read the login for the host from ~/.netrc"
    )
    parser.add_argument("--netrc-file", metavar="FILE", help="--netrc with this file")


def _limits(parser: argparse.ArgumentParser) -> None:
    """curl's names for the time and speed bounds of each download."""
    parser.add_argument(
        "-m",
        "--max-time",
        type=_seconds,
        metavar="SECONDS",
        help="fail a download not complete this long after it started (default: no bound)",
    )
    parser.add_argument(
        "-Y",
        "--speed-limit",
        type=int,
        metavar="BYTES",
        help="a request slower than this many bytes/s for --speed-time fails, and a "
        "download that keeps failing so fails for good, however long it trickles (default 1)",
    )
    parser.add_argument(
        "-y",
        "--speed-time",
        type=_seconds,
        metavar="SECONDS",
        help="the window of --speed-limit (default 120)",
    )
    parser.add_argument("--connect-timeout", type=_seconds, metavar="SECONDS", help="default 300")


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _durability(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--durability",
        choices=("normal", "full"),
        default="normal",
        help="normal (default): through the page cache, a kill loses nothing, a power "
        "loss may lose what had not reached the disk; full: each file on the disk "
        "before it is complete",
    )


def _connections(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--connections",
        type=_count,
        default="auto",
        metavar="N",
        help="per file, 1 to 64 (default: auto, as many as raise the throughput)",
    )


def _count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of connections") from None


def _limit(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit-rate",
        type=_rate,
        default=0,
        metavar="RATE",
        help=f"the most bytes a second for {what}, as curl's: 500K, 10M, 1G (1024-based)",
    )


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """Bytes a second from curl's ``--limit-rate`` syntax: ``500K``, ``10M``, ``1.5G``
    (1024-based, as curl and aria2 read them); ``0`` means no limit."""
    m = _RATE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a rate (bytes a second, e.g. 500K, 10M, 1G)")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bgtransfer",
        description="Background downloads: many ranged connections a file, resumable after\n"
        "any interruption, never a file that looks complete and is not.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("get", help="download one file; running it again resumes")
    g.add_argument("url", nargs="+", help="the file's URL, and more URLs of the same file")
    g.add_argument(
        "-o",
        "--output",
        help="result file, or a folder for the URL's name (a trailing / always means a "
        "folder; default: that name here)",
    )
    g.add_argument(
        "--create-dirs", action="store_true", help="make the folder of -o when it is missing"
    )
    _connections(g)
    g.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    g.add_argument("--checksum", help="ALGO=HEX with sha256, sha1, md5, xxh3 or xxh128")
    g.add_argument(
        "--background",
        action="store_true",
        help="hand it to the background service, print its GUID and exit (see wait)",
    )
    _limit(g, "the download")
    _login(g)
    _trust(g)
    _limits(g)
    _durability(g)
    m = sub.add_parser(
        "mirror", help="download every file of a list (URL [URL...] [NAME] [ALGO=HEX])"
    )
    m.add_argument("-i", "--input", required=True, help="the list, or - for stdin")
    m.add_argument("-d", "--dir", required=True, type=Path, help="where the files go")
    m.add_argument("-j", "--parallel", type=int, default=16, help="files at once (default 16)")
    _connections(m)
    m.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    m.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on a Dask cluster: its scheduler (tcp://HOST:PORT), or local:N worker "
        "processes here; DIR must be a path every worker sees (docs/cluster.md)",
    )
    m.add_argument(
        "--host-connections",
        type=int,
        metavar="N",
        help="with --cluster: connections to one host over the whole cluster at most",
    )
    _limit(m, "all the files together")
    _login(m)
    _trust(m)
    _limits(m)
    _durability(m)
    ls = sub.add_parser("list", help="operations in the state directory, failed ones too")
    ls.add_argument("--all", action="store_true", help="also those that completed or were canceled")
    r = sub.add_parser("resume", help="resume one operation (failed ones too), or --all")
    r.add_argument("guid", nargs="?", help="its GUID, or the first characters of it")
    r.add_argument("--all", action="store_true")
    r.add_argument("--url", help="continue from this URL (the same file, moved or re-signed)")
    r.add_argument(
        "--limit-rate",
        type=_rate,
        default=None,
        metavar="RATE",
        help="a new limit for each file resumed, as curl's (0: none); else the one it had",
    )
    _login(r)
    _trust(r)
    _limits(r)
    _durability(r)
    c = sub.add_parser("cancel", help="cancel an operation and remove its partial data")
    c.add_argument("guid", help="its GUID, or the first characters of it")
    d = sub.add_parser("demo", help="serve a generated file on loopback and download it")
    d.add_argument("--size-mib", type=int, default=256)
    d.add_argument("-c", "--connections", type=int, default=8)
    for p in sub.choices.values():
        _common(p)
    service_cli.add_parsers(sub, _common)
    return parser


def _get(args: argparse.Namespace) -> int:
    return service_cli.get(args, get)


def _mirror(args: argparse.Namespace) -> int:
    return mirror(args, _on_cluster)


def _on_cluster(
    args: argparse.Namespace, entries: list[Entry], logins: list[tuple[str, str]]
) -> int:
    """``mirror --cluster``: Dask is imported only then."""
    from engine.cluster._cli import mirror_on_cluster

    return mirror_on_cluster(args, entries, logins)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "get": _get,
    "mirror": _mirror,
    "list": service_cli.through_service(lambda a: list_(a, downloader(a)), service_cli.list_),
    "resume": service_cli.through_service(resume, service_cli.resume),
    "cancel": service_cli.through_service(cancel, service_cli.cancel),
    "demo": demo,
    "service": service_cli.service,
    "wait": service_cli.wait,
}


_stopped_by = 0
"""The signal (SIGTERM, SIGHUP) the console script was stopped by, once it came."""


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (a service stopped, ``timeout``) or SIGHUP (the terminal gone): pause and
    exit as Ctrl-C does, the status saved as PAUSED_BY_APPLICATION and the staged bytes
    written, where a plain kill leaves RUNNING and refetches them; a second signal
    ends the process at once."""
    global _stopped_by
    _stopped_by = signum
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at exit: a reader gone early is told below
        return code
    except (Interrupted, KeyboardInterrupt) as exc:
        why = signal.Signals(_stopped_by).name if _stopped_by else "interrupted"
        again = ""
        if isinstance(exc, Interrupted):
            again = "; run the same command again to resume"
            over = exc.starting_over()
            if over:
                names = ", ".join(op.result_file.name for op in over)
                again = (
                    f"; the server of {names} does not resume downloads (no ranges): "
                    "running the same command again starts over"
                )
        print(f"bgtransfer: {why}{again}", file=sys.stderr)
        return 128 + (_stopped_by or signal.SIGINT)
    except (InvalidRequestError, ValueError) as exc:
        if args.debug:
            raise
        say(str(exc))
        return 2
    except BrokenPipeError:
        _drop_output()
        return 128 + signal.SIGPIPE
    except (TransferError, OSError) as exc:
        if args.debug:
            raise
        say(f"error: {describe(exc)}")
        return 1


def _drop_output() -> None:
    """The reader of the output went away (``bgtransfer list | head -1``): end without
    a word, with the status of a program that SIGPIPE ends, as ``ls`` does (Python
    ignores SIGPIPE, so the write raised instead).  What is still buffered goes to
    /dev/null: the interpreter flushes stdout at exit and would fail again (Python's
    own recipe, in the signal module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(AttributeError, OSError, ValueError):  # replaced, closed
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run() -> None:
    """The console script: ``main``, then exit without the final collection.

    At exit the interpreter collects every object it tracks before tearing the
    modules down: 20-25 ms of a 110 ms ``bgtransfer get``, for objects that are
    freed with the process anyway.  ``gc.freeze`` moves them out of the collector's
    reach first (finalizers registered with ``weakref.finalize`` and ``atexit``
    still run).  Only here: a program calling ``main`` goes on collecting, and keeps
    its own SIGTERM and SIGHUP, which the command takes as a Ctrl-C (``_stop``).
    """
    wipe_from_process_title()  # before anything else: ps shows the stars from here on
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    code = main()
    gc.freeze()
    sys.exit(code)
