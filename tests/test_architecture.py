"""The layering and no-mutex rules of DESIGN.md, read from the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"storage": {"pykka", "actors", "runtime"}, "actors": {"runtime"}, "runtime": set()}
LOCKS = {"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "allocate_lock"}


def _modules(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


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
                    if n.split(".")[0] in FORBIDDEN[pkg]]
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
    mod = __import__(pkg)
    assert isinstance(mod.__all__, list) and mod.__all__
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_storage_imports_without_pykka() -> None:
    import subprocess
    import sys

    code = "import sys, storage; assert 'pykka' not in sys.modules and 'actors' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
