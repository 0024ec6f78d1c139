"""The runtime modules import one another in one direction: no cycle, and none held by late imports.

`_core` (the actors and how to ask them) <- `_events` <- `_tracker` <- `_adapter` <- `_manager` <-
`_system`: each module can be imported first, on its own, and no import of a sibling hides inside a
function or behind ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
MODULES = sorted(p.stem for p in RUNTIME.glob("*.py") if p.stem != "__main__")


def _sibling(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The runtime modules (by file stem) an import statement names."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 1:
            return [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        if node.level == 0 and node.module and node.module.split(".")[:1] == ["hoard"]:
            parts = node.module.split(".")
            return [parts[1]] if len(parts) > 1 and parts[1].startswith("_") else []
        return []
    return [a.name.split(".")[1] for a in node.names
            if a.name.startswith("hoard.") and a.name.split(".")[1].startswith("_")]


def _late_sibling_imports(tree: ast.Module) -> list[str]:
    """Imports of sibling modules anywhere but at module level (functions, TYPE_CHECKING blocks)."""
    top = {id(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    return [f"line {node.lineno}: {name}" for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top
            for name in _sibling(node) if name in MODULES]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        tree = ast.parse((RUNTIME / f"{name}.py").read_text(encoding="utf-8"))
        graph[name] = {s for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                       for s in _sibling(n) if s in MODULES and s != name}
    return graph


@pytest.mark.parametrize("name", MODULES)
def test_no_runtime_module_imports_a_sibling_late(name: str) -> None:
    tree = ast.parse((RUNTIME / f"{name}.py").read_text(encoding="utf-8"))
    assert _late_sibling_imports(tree) == []


@pytest.mark.parametrize("name", MODULES)
def test_each_runtime_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    # `hoard/__init__` imports every module, so stand in an empty `hoard` package: `name` is then the
    # first runtime module imported, and must bring in everything it needs by itself.
    code = (
        "import importlib, importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('hoard')\n"
        "pkg = types.ModuleType('hoard'); pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['hoard'] = pkg\n"
        f"module = importlib.import_module('hoard.{name}')\n"
        "missing = [n for n in getattr(module, '__all__', []) if not hasattr(module, n)]\n"
        "assert not missing, missing\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603 - runs our own interpreter/tools with fixed arguments
    assert done.returncode == 0, done.stderr


def test_runtime_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert graph["_core"] & {"_events", "_tracker", "_adapter", "_manager", "_system"} == set()
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*path, node])}"
        state[node] = "open"
        for dep in sorted(graph[node]):
            visit(dep, [*path, node])
        state[node] = "done"
        order.append(node)

    for name in MODULES:
        visit(name, [])
    for low, high in [("_core", "_events"), ("_events", "_tracker"), ("_tracker", "_adapter"),
                      ("_adapter", "_manager"), ("_manager", "_system")]:
        assert order.index(low) < order.index(high)


def test_the_checks_see_a_late_import_and_a_cycle() -> None:
    """Not vacuous: the AST helpers flag the forms the old cycle took."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._system import X\n"
                     "def f():\n    from ._manager import M\n    import hoard._adapter\n")
    assert _late_sibling_imports(tree) == ["line 3: _system", "line 5: _manager", "line 6: _adapter"]
