"""Shared fixtures.  The tests import the *installed* package, never the source tree."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from servers import Nginx

import engine

# engine/ sits at the top of the repository; importing it from there would lack the
# compiled core and hide a broken build.  pytest's rootdir is not on sys.path (tests/
# has no __init__.py), so this holds unless someone runs ``python -m pytest``.
try:
    import engine._native
except ImportError as exc:  # pragma: no cover - a message for a broken set-up
    raise SystemExit(
        f"engine imported from {engine.__file__} has no compiled core: "
        "run `pip install '.[test]'` and then `pytest` (not `python -m pytest`)"
    ) from exc

T = TypeVar("T")

# Files nginx serves: name -> size (random bytes, so a misplaced byte cannot hide).
NGINX_FILES = {
    "big.bin": 48 * 1024 * 1024 + 12345,
    "small.bin": 10 * 1024,
    "empty.bin": 0,
}


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx on loopback serving NGINX_FILES from a session temp dir."""
    server = Nginx(tmp_path_factory.mktemp("nginx"))
    for name, size in NGINX_FILES.items():
        (server.www / name).write_bytes(os.urandom(size))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine to completion on a fresh loop of each kind."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)

    return runner
