"""Figures gathered by the benchmarks, printed side by side at the end of the session."""

from __future__ import annotations

from collections import defaultdict

RESULTS: dict[str, dict[str, float]] = defaultdict(dict)


def record(group: str, name: str, value: float) -> None:
    """Remember one figure (GB/s, seconds...) for the closing table."""
    RESULTS[group][name] = value


def lines() -> list[str]:
    """The closing table, one line a figure, each group sorted best first."""
    out: list[str] = []
    for group, rows in RESULTS.items():
        out.append(f"{group}:")
        for name, value in sorted(rows.items(), key=lambda kv: -kv[1]):
            out.append(f"  {name:<36} {value:8.2f}")
    return out
