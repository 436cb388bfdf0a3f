"""The package's layout: internal modules are named so, and imports go one way."""

from __future__ import annotations

import ast
import pathlib

import pycluster

PACKAGE = pathlib.Path(pycluster.__file__).parent
PUBLIC = {
    "pycluster",
    "pycluster.__main__",
    "pycluster.aio",
    "pycluster.http",
    "pycluster.socketserver",
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every pycluster module ``name`` imports, wherever the import stands (type-only too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m in known and m != name and m != "pycluster"}


def test_internal_modules_start_with_an_underscore() -> None:
    for name in _modules():
        if name in PUBLIC:
            continue
        assert any(part.startswith("_") for part in name.split(".")[1:]), (
            f"{name} is internal but its name does not say so"
        )


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {n: _imports(n, p, set(modules)) for n, p in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle of roles.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
