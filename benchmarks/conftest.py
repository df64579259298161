"""The nginx every benchmark module downloads from, and the side-by-side table that
the benchmarks gathered (see sidebyside.py), printed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from served import serve_big_file
from servers import Nginx
from sidebyside import lines


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Nginx, int]]:
    """nginx serving big.bin (see served.py), one per benchmark module."""
    yield from serve_big_file(tmp_path_factory.mktemp("bench-nginx"), request.config)


@pytest.fixture(scope="module")
def plain_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving an empty folder, for a module that makes its own files."""
    server = Nginx(tmp_path_factory.mktemp("bench-nginx"))
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    table = lines()
    if table:
        terminalreporter.section("bgtransfer side-by-side")
        for line in table:
            terminalreporter.write_line(line)
