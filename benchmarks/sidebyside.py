"""Figures gathered by the benchmarks, printed side by side at the end of the session."""

from __future__ import annotations

from collections import defaultdict

RESULTS: dict[str, dict[str, float]] = defaultdict(dict)
LOWER_IS_BETTER: set[str] = set()


def record(group: str, name: str, value: float, *, lower_is_better: bool = False) -> None:
    """Remember one figure (GB/s, seconds...) for the closing table."""
    RESULTS[group][name] = value
    if lower_is_better:
        LOWER_IS_BETTER.add(group)


def lines() -> list[str]:
    """The closing table, one line a figure, each group sorted best first."""
    out: list[str] = []
    for group, rows in RESULTS.items():
        out.append(f"{group}:")
        sign = 1 if group in LOWER_IS_BETTER else -1
        for name, value in sorted(rows.items(), key=lambda kv: sign * kv[1]):
            out.append(f"  {name:<44} {value:10.2f}")
    return out
