"""Prints the side-by-side table that the benchmarks gathered (see sidebyside.py)."""

from __future__ import annotations

import pytest
from sidebyside import lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    table = lines()
    if table:
        terminalreporter.section("bgtransfer side-by-side")
        for line in table:
            terminalreporter.write_line(line)
