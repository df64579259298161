"""Shared fixtures.  The tests import the *installed* package, never the source tree."""

from __future__ import annotations

import engine

# engine/ sits at the top of the repository; importing it from there would lack the
# compiled core and hide a broken build.  pytest's rootdir is not on sys.path (tests/
# has no __init__.py), so this holds unless someone runs ``python -m pytest``.
assert hasattr(engine, "__file__")
try:
    import engine._native
except ImportError as exc:  # pragma: no cover - a message for a broken set-up
    raise SystemExit(
        f"engine imported from {engine.__file__} has no compiled core: "
        "run `pip install '.[test]'` and then `pytest` (not `python -m pytest`)"
    ) from exc
