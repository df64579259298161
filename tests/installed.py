"""The tests run against the installed package: refuse one that is not this tree.

Imported first by ``conftest.py``: an edit to ``engine/``, ``csrc/`` or ``bindings/``
that was never reinstalled fails the run at once instead of testing the old code.
"""

from __future__ import annotations

import sys
from pathlib import Path

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings"))
from source_digest import source_digest  # noqa: E402  (the build's own digest)


def _stale_install() -> list[str]:
    """What differs between the installed package and the tree the tests come from."""
    installed = Path(engine.__file__).resolve().parent
    if installed == (ROOT / "engine").resolve():
        return []  # an editable or in-place install: the tree itself is imported
    tree = {p.relative_to(ROOT / "engine") for p in (ROOT / "engine").rglob("*.py")}
    there = {p.relative_to(installed) for p in installed.rglob("*.py")}
    stale = sorted(str(p) for p in tree ^ there)
    stale += sorted(
        str(p)
        for p in tree & there
        if (ROOT / "engine" / p).read_bytes() != (installed / p).read_bytes()
    )
    try:
        built = engine._native.ffi.string(engine._native.lib.bgt_source_digest()).decode()
    except AttributeError:  # a core built before the digest existed
        built = ""
    if built != source_digest(ROOT):
        stale.append("the C core (csrc/, bindings/)")
    return stale


if _stale := _stale_install():  # pragma: no cover - a message for a stale set-up
    raise SystemExit(
        "the installed bgtransfer is not this tree (differs: "
        + ", ".join(_stale[:5])
        + (", ..." if len(_stale) > 5 else "")
        + "): run `pip install .` again, then `pytest`"
    )
