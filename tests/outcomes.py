"""Rows the fault matrix gathers, printed as a table at the end of the session."""

from __future__ import annotations

OUTCOMES: list[tuple[str, int, str, str]] = []
"""(fault, connections, outcome, detail)"""


def table() -> list[str]:
    lines = [f"{'fault':<16} {'conns':>5}  {'outcome':<22} detail"]
    for fault, conns, outcome, detail in sorted(OUTCOMES):
        lines.append(f"{fault:<16} {conns:>5}  {outcome:<22} {detail}")
    return lines
