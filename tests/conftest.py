"""Shared fixtures.  The tests import the *installed* package, never the source tree."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import installed  # noqa: F401  (first: refuses a stale install)
import pytest
import trustme
import uvloop
from network import SwitchableNetwork
from servers import FaultServer, Nginx

from engine import BackgroundDownloader, TransferConfig

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


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority of the tests' own, which no system trusts."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_nginx(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Nginx]:
    """nginx with HTTPS and HTTP/2 (certificate for localhost and 127.0.0.1 from the test CA)."""
    root = tmp_path_factory.mktemp("tls-nginx")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = root / "chain.pem", root / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    server = Nginx(root, tls=(chain, key))
    (server.www / "big.bin").write_bytes(os.urandom(24 << 20))
    (server.www / "small.bin").write_bytes(os.urandom(10_000))
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


FAST = TransferConfig(poll_interval=0.05, backoff_base=0.05, backoff_max=0.5, block_size=1 << 16)
"""Quick polls and back-off for tests; small blocks so a pause lands mid-file."""


@pytest.fixture
def network() -> SwitchableNetwork:
    return SwitchableNetwork()


@pytest.fixture
def make_downloader(
    tmp_path: Path, network: SwitchableNetwork
) -> Callable[..., BackgroundDownloader]:
    """BackgroundDownloader(**kwargs) with a private state dir and the switchable network."""

    def make(**kwargs: Any) -> BackgroundDownloader:
        kwargs.setdefault("state_dir", tmp_path / "state")
        kwargs.setdefault("config", FAST)
        kwargs.setdefault("network_monitor", network)
        kwargs.setdefault("block_size", FAST.block_size)
        return BackgroundDownloader(**kwargs)

    return make


@pytest.fixture
def body() -> bytes:
    """8 MiB of random bytes for the fault server."""
    return os.urandom(8 << 20)


@pytest.fixture
def fault_server(body: bytes) -> Iterator[FaultServer]:
    server = FaultServer(body)
    try:
        yield server
    finally:
        server.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault matrix's outcomes, when it ran."""
    from outcomes import OUTCOMES, table

    if OUTCOMES:
        terminalreporter.section("fault matrix outcomes")
        for line in table():
            terminalreporter.write_line(line)
