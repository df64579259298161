"""The command line's service commands: ``service run|status|stop|install``, ``wait``,
``get --background``, and ``list``/``resume``/``cancel`` through a running service.

Exit statuses as ``get``'s: 0 when every operation completed, 1 when one failed or
was canceled; ``service status`` says ``not running`` with status 3, as
``systemctl status`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequestError
from engine.service.lockfile import holder
from engine.service.paths import ServicePaths
from engine.service.peercred import answers
from engine.service.protocol import OpView

NOT_RUNNING = 3


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``service`` and ``wait``; ``get --background`` is added by ``cli``."""
    s = sub.add_parser("service", help="the background service (runs downloads for clients)")
    s.add_argument("action", choices=["run", "status", "stop", "install"])
    s.add_argument(
        "--idle-timeout",
        type=float,
        help="run: seconds with nothing to do before it exits (default 60)",
    )
    w = sub.add_parser("wait", help="follow operations in the service until each ends")
    w.add_argument("guids", nargs="+", metavar="GUID")
    common(s)
    common(w)


def running(state_dir: Path | None) -> bool:
    """A service answers for this state directory (no start, no aiohttp import)."""
    return answers(ServicePaths.of(state_dir).socket)


def service(args: argparse.Namespace) -> int:
    paths = ServicePaths.of(args.state_dir)
    if args.action == "run":
        from engine.service.server import run_service

        return run_service(args.state_dir, args.idle_timeout)
    if args.action == "status":
        pid = holder(paths.lock)
        if pid is None or not answers(paths.socket):
            print("not running")
            return NOT_RUNNING
        print(f"running pid {pid}")
        return 0
    if args.action == "stop":
        pid = holder(paths.lock)
        if pid is None:
            print("not running")
            return 0
        _call(args, lambda c: c.stop(), autostart=False)
        _wait_gone(paths)
        print(f"stopped pid {pid}")
        return 0
    from engine.service.units import install

    for path in install(paths):
        print(path)
    print("then: systemctl --user daemon-reload && systemctl --user enable --now bgtransfer.socket")
    return 0


def _wait_gone(paths: ServicePaths, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while holder(paths.lock) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not stop in {timeout:.0f} s")
        time.sleep(0.05)


def _call(args: argparse.Namespace, fn: Callable[[Any], Any], *, autostart: bool = True) -> Any:
    from engine.service.client import ServiceClient

    async def go() -> Any:
        client = ServiceClient(args.state_dir, autostart=autostart)
        try:
            return await fn(client)
        finally:
            await client.close()

    return asyncio.run(go())


# -- get --background, wait ------------------------------------------------------------------
def get(args: argparse.Namespace, local: Callable[[argparse.Namespace], int]) -> int:
    """``get``: handed to the service with ``--background``; followed there when the
    service already downloads that file (a second ``get`` of it, as after a first
    one's Ctrl-C); else ``local``, in this process."""
    if args.background:
        return get_background(args)
    if running(args.state_dir):
        from engine.cli.names import split_login

        url, _ = split_login(args.url[0])
        output = os.fspath(_output(args, url))
        views = _call(args, lambda c: c.current())
        mine = [v for v in views if v.result_file == output and v.uri == url]
        if mine:
            return _follow(args, [mine[0].guid])
    return local(args)


def _output(args: argparse.Namespace, url: str) -> Path:
    """The result file, named as ``get`` names it."""
    from engine.cli.names import name_from_url

    output = Path(os.path.abspath(args.output or name_from_url(url)))
    if args.output and output.is_dir():
        output /= name_from_url(url)
    return output


def get_background(args: argparse.Namespace) -> int:
    """Hand the download to the service; print its GUID."""
    from engine._disk.checksum import parse
    from engine._ops.validate import host_of
    from engine.cli.login import credential
    from engine.cli.names import split_login
    from engine.service.protocol import credentials_json

    url, login = split_login(args.url[0])
    extra = [split_login(more) for more in args.url[1:]]
    logins = [login, *(found for _, found in extra)]
    creds = credential(args, logins, [host_of(url), *(host_of(u) for u, _ in extra)])
    output = _output(args, url)
    if args.checksum:
        parse(args.checksum)
    body: dict[str, Any] = {
        "uri": url,
        "result_file": os.fspath(output),
        "max_connections": 0 if args.connections == "auto" else args.connections,  # 0: auto
        "headers": [_header(h) for h in args.header],
    }
    if extra:
        body["sources"] = [u for u, _ in extra]
    if args.limit_rate:
        body["max_bytes_per_second"] = args.limit_rate
    if args.checksum:
        body["checksum"] = args.checksum
    if creds is not None:
        body["credentials"] = credentials_json(creds, None)
    view = _call(args, lambda c: c.create(body))
    print(view.guid)
    return 0


def _header(text: str) -> list[str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise InvalidRequestError(f"bad header {text!r}: expected 'Name: value'")
    return [name.strip(), value.strip()]


def wait(args: argparse.Namespace) -> int:
    return _follow(args, list(args.guids))


def _follow(args: argparse.Namespace, guids: list[str]) -> int:
    """Follow operations in the service to their end; 0 when every one completed."""
    views = _call(args, lambda c: follow_until_ended(c, guids))
    failed = 0
    for view in views:
        if view.status == "COMPLETED":
            if not args.quiet:
                print(view.result_file)
        else:
            failed += 1
            why = view.error or view.status.lower()
            print(f"bgtransfer: error: {view.guid}: {why}", file=sys.stderr)
    return 1 if failed else 0


async def follow_until_ended(client: Any, guids: list[str]) -> list[OpView]:
    from engine.service.follow import Follower

    latest: dict[str, OpView] = {}
    full = []
    for guid in guids:  # a GUID prefix as ``list`` shows it, made whole
        full.append((await _resolve(client, guid)).guid)
    follower = Follower(client, full, lambda v: latest.__setitem__(v.guid, v))
    await follower.run(lambda: all(g in latest and latest[g].ended for g in full))
    return [latest[g] for g in full]


async def _resolve(client: Any, guid: str) -> OpView:
    try:
        view: OpView = await client.get(guid)
        return view
    except InvalidRequestError:
        if len(guid) >= 8:
            for view in await client.current():
                if view.guid.startswith(guid):
                    return view
        raise InvalidRequestError(f"no operation {guid} in the service") from None


def through_service(
    local: Callable[[argparse.Namespace], int], remote: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """``list``, ``resume``, ``cancel``: the service's when one runs, else in-process."""

    def command(args: argparse.Namespace) -> int:
        return remote(args) if running(args.state_dir) else local(args)

    return command


# -- list, resume, cancel through the service ----------------------------------------------
def list_(args: argparse.Namespace) -> int:
    """The service's operations, in the table ``bgtransfer list`` prints in-process."""
    from engine._ops.masking import mask_text, mask_url
    from engine.cli.listing import print_rows, short_ids, size_text

    views = [v for v in _call(args, lambda c: c.current()) if args.all or not v.ended]
    short = short_ids([v.guid for v in views])
    rows: list[tuple[str, ...]] = []
    for v in views:
        total = v.total_bytes_to_receive or None
        done = f"{100 * v.bytes_received / total:.1f}%" if total else size_text(v.bytes_received)
        why = mask_text(v.error) if v.error else ""
        rows.append(
            (short[v.guid], v.status, size_text(total), done, v.result_file, mask_url(v.uri), why)
        )
    print_rows(rows, args)
    return 0


def resume(args: argparse.Namespace) -> int:
    from engine.cli.login import credential
    from engine.service.protocol import credentials_json

    creds = credential(args, [], [])
    if args.all == bool(args.guid):
        raise InvalidRequestError("resume takes one GUID or --all")
    secret = credentials_json(creds, None) or None

    async def go(client: Any) -> list[OpView]:
        views = await client.current() if args.all else [await _resolve(client, args.guid)]
        guids = []
        for view in views:
            if not view.ended:
                if args.limit_rate is not None:
                    await client.patch(view.guid, {"max_bytes_per_second": args.limit_rate})
                await client.control(view.guid, "resume", secret)
            guids.append(view.guid)
        return await follow_until_ended(client, guids) if guids else []

    views = _call(args, go)
    failed = [v for v in views if v.status != "COMPLETED"]
    for v in failed:
        print(f"bgtransfer: error: {v.guid}: {v.error or v.status.lower()}", file=sys.stderr)
    return 1 if failed else 0


def cancel(args: argparse.Namespace) -> int:
    async def go(client: Any) -> OpView:
        view = await _resolve(client, args.guid)
        result: OpView = await client.control(view.guid, "cancel")
        return result

    view = _call(args, go)
    if not args.quiet:
        print(f"{view.guid} canceled ({view.result_file})", file=sys.stderr)
    return 0
