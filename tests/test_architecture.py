"""The layering and no-mutex rules of DESIGN.md, read from the code."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# repository folder -> the package it installs as, and the modules it must not import
PACKAGE = {"storage": "hoard.storage", "actors": "hoard.actors", "runtime": "hoard"}
FORBIDDEN = {"storage": {"pykka", "hoard.actors", "hoard"}, "actors": {"hoard"}, "runtime": set()}
LOCKS = {"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "allocate_lock"}


def _modules(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def _upward(module: str, pkg: str) -> bool:
    """Whether `module` is pykka (for storage) or a layer above `pkg`."""
    parts = module.split(".")
    if parts[0] != "hoard":
        return parts[0] in FORBIDDEN[pkg]
    target = "hoard." + parts[1] if len(parts) > 1 and parts[1] in ("actors", "storage") else "hoard"
    return target in FORBIDDEN[pkg]


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_imports_only_point_down(pkg: str) -> None:
    bad = []
    for path in _modules(pkg):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if _upward(n, pkg)]
    assert bad == []


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_no_module_uses_threading_locks(pkg: str) -> None:
    bad = []
    for path in _modules(pkg):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("threading", "_thread", "multiprocessing"):
                bad += [f"{path.relative_to(ROOT)}: imports {a.name}" for a in node.names if a.name in LOCKS]
            if (isinstance(node, ast.Attribute) and node.attr in LOCKS and isinstance(node.value, ast.Name)
                    and node.value.id in ("threading", "_thread", "multiprocessing")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_packages_export_an_explicit_all(pkg: str) -> None:
    mod = importlib.import_module(PACKAGE[pkg])
    assert isinstance(mod.__all__, list) and mod.__all__
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_storage_imports_without_pykka() -> None:

    # `hoard/__init__` (the runtime layer) imports pykka, so stand in an empty `hoard` package first:
    # what is checked is that the storage layer itself pulls in neither pykka nor the actor layer.
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('hoard')\n"
        "pkg = types.ModuleType('hoard'); pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['hoard'] = pkg\n"
        "import hoard.storage\n"
        "assert hoard.storage.SQLiteStore\n"
        "assert 'pykka' not in sys.modules and 'hoard.actors' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)  # noqa: S603 - runs our own interpreter/tools with fixed arguments
