"""The package's shape: no import circle inside ``engine``, no module over 500 lines,
no module reading another module's private names (what docs/design.md promises)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Modules of ``engine`` this one imports when it runs: at the top and inside
    functions (a lazy import is still a circle), not under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        wanted = _runtime_imports(tree, name, path.name == "__init__.py")
        # an edge to a module, never to the package that holds it (its __init__
        # re-exports the public names, and importing a submodule runs it first)
        graph[name] = {m for m in wanted if m in paths and m != name and m != "engine"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_finds_a_cycle() -> None:
    """The cycle finder itself reports a circle of three modules."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    """No two modules of engine import each other, directly or through others."""
    assert _cycles(_graph()) == []


def test_operation_imports_no_downloader() -> None:
    """operation.py sits below downloader.py: it never imports it, not even lazily."""
    assert "engine.downloader" not in _graph()["engine.operation"]


def test_no_module_over_500_lines() -> None:
    """Every Python module of engine is under 500 lines (one idea per module)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in ENGINE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def _private_names_defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)  # its own field: set on itself, never on another object
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


OTHERS_PRIVATE_ALLOWED = {
    "_value_",  # Enum's own field, read for speed where a status is written
    "_ensure_loop",  # pycurl's driver: tests/test_pycurl_contract.py pins it
}


def test_no_private_name_of_another_module() -> None:
    """No module reads a private attribute it does not define, or imports another
    module's private name: the engine side uses interfaces, not private fields."""
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _private_names_defined(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = node.attr
                base = node.value
                if (
                    name.startswith("_")
                    and not name.startswith("__")
                    and not (isinstance(base, ast.Name) and base.id in ("self", "cls"))
                    and name not in own
                    and name not in OTHERS_PRIVATE_ALLOWED
                ):
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine"):
                found.extend(
                    f"{where}:{node.lineno}: imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                )
    assert found == []
