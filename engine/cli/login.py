"""The command's login and time bounds: curl's options, passwords off the command line.

A password is read from ``$BGTRANSFER_PASSWORD`` or a netrc file (``--netrc``,
``--netrc-file``) before it is asked on the terminal; ``user:password`` on the
command line still works, and is wiped from the process title (``cli.secrets``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable

from engine import Credential, InvalidRequestError, TransferConfig
from engine._ops.validate import host_of
from engine.cli.secrets import PASSWORD_ENV, netrc_login, password_for


def with_limits(args: argparse.Namespace, base: TransferConfig | None) -> TransferConfig | None:
    """``base`` (the defaults when None) with the bounds the command line set:
    ``--max-time``, ``--speed-limit``, ``--speed-time``, ``--connect-timeout``."""
    bounds = {
        "max_time": getattr(args, "max_time", None),
        "low_speed_limit": getattr(args, "speed_limit", None),
        "response_timeout": getattr(args, "speed_time", None),
        "connect_timeout": getattr(args, "connect_timeout", None),
    }
    given = {name: value for name, value in bounds.items() if value is not None}
    if not given:
        return base
    return dataclasses.replace(base or TransferConfig(), **given)


def credential(
    args: argparse.Namespace, found: Iterable[tuple[str, str] | None], hosts: Iterable[str]
) -> Credential | None:
    """``--user USER[:PASSWORD]``: a password left out is read from $BGTRANSFER_PASSWORD,
    else the netrc file, else asked on the terminal.  Without ``--user``: the one
    ``user:password`` the URLs carried, else the netrc file's login for ``hosts``."""
    user: str | None = getattr(args, "user", None)
    netrc_file = netrc_file_of(args)
    names = sorted(set(hosts))
    if user is not None:
        name, colon, password = user.partition(":")
        if not colon:
            found_password = None
            for host in names or [""]:
                found_password = password_for(name, host, netrc_file)
                if found_password is not None:
                    break
            password = found_password if found_password is not None else _ask(name)
        return Credential(name, password)
    logins = {login for login in found if login is not None}
    if not logins and netrc_file is not None:
        logins = {login for host in names if (login := _netrc(host, netrc_file)) is not None}
    if len(logins) > 1:
        raise InvalidRequestError(
            f"the URLs carry {len(logins)} different logins: one a command (split the list)"
        )
    return Credential(*logins.pop()) if logins else None


def netrc_file_of(args: argparse.Namespace) -> str | None:
    named: str | None = getattr(args, "netrc_file", None)
    if named is not None:
        return named
    return "~/.netrc" if getattr(args, "netrc", False) else None


def hosts_under_way(args: argparse.Namespace) -> list[str]:
    """The hosts of the operations in the state directory, whose netrc logins a resume
    uses (read from the store: an operation object, once made, keeps its login)."""
    if netrc_file_of(args) is None:
        return []
    from engine._state.store import Store

    return [host_of(rec.uri) for rec in Store.at(args.state_dir).current()]


def _netrc(host: str, netrc_file: str) -> tuple[str, str] | None:
    import netrc

    try:
        return netrc_login(host, netrc_file)
    except (netrc.NetrcParseError, OSError) as exc:
        raise InvalidRequestError(f"{netrc_file}: {exc}") from None


def _ask(name: str) -> str:
    if not sys.stdin.isatty():
        raise InvalidRequestError(
            f"--user {name}: no password (set {PASSWORD_ENV}, use --netrc, or run on a "
            "terminal to be asked)"
        )
    import getpass

    return getpass.getpass(f"password for {name}: ")
