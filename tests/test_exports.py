"""The public faces of hoard's three packages hold (in the spirit of trio's ``test_exports.py``).

Each package's ``__init__`` is its public face: every name in its ``__all__`` exists, a name means one
object wherever it is exported, and no module anywhere reaches into another package's ``_private``
modules (tests may use the private modules of the package they test).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hoard", "hoard.actors", "hoard.storage")
# folder -> the package whose private modules its files may use
OWNER = {
    "runtime": "hoard",
    "actors": "hoard.actors",
    "storage": "hoard.storage",
    "tests/runtime": "hoard",
    "tests/cli": "hoard",
    "tests/actors": "hoard.actors",
    "tests/storage": "hoard.storage",
}
# (folder or file, private module) -> why a cross-package reach-in is truly needed there
ALLOWED = {
    ("tests/reliability", "hoard.storage._codec"): "crafts damaged blobs from the on-disk format's internals",
    ("tests/distributed/test_several_processes.py", "hoard._system"): "resolves a store URL the way the system does",
    ("tests/distributed/test_forwarder_wire.py", "hoard._forward"): "drives the forwarder's own request/reply "
                                                                   "(inbox, late answers, request ids) directly",
    ("tests/bridges/test_relay.py", "hoard._bridges._redis"): "feeds the Redis backend's own reply reader replies "
                                                               "split at any byte, which a real server never does "
                                                               "on demand",
}


def _package(name: str) -> ModuleType:
    return importlib.import_module(name)


def _layer_of(module: str) -> str | None:
    """The package (one of PACKAGES) a dotted module name belongs to, or None if it is not ours."""
    parts = module.split(".")
    if parts[0] != "hoard":
        return None
    if len(parts) > 1 and parts[1] in ("actors", "storage"):
        return f"hoard.{parts[1]}"
    return "hoard"


def _is_private(module: str) -> bool:
    layer = _layer_of(module)
    assert layer is not None
    rest = module.split(".")[len(layer.split(".")):]
    return any(p.startswith("_") and not p.startswith("__") for p in rest)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in `tree`; `from m import _x` also counts as `m._x`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def _owner(rel: Path) -> str | None:
    for folder, pkg in OWNER.items():
        if rel.is_relative_to(folder):
            return pkg
    return None


def _allowed(rel: Path, module: str) -> bool:
    return any(rel.is_relative_to(where) and (module == private or module.startswith(private + "."))
               for where, private in ALLOWED)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists_once_in_all(name: str) -> None:
    pkg = _package(name)
    exported = pkg.__all__
    assert isinstance(exported, list) and exported, f"{name} has no explicit __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(pkg, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_of_a_package_are_all_exported(name: str) -> None:
    """A public name bound in an ``__init__`` (not a submodule) is in ``__all__``: the face is explicit."""
    pkg = _package(name)
    stray = sorted(n for n, v in vars(pkg).items()
                   if not n.startswith("_") and not isinstance(v, ModuleType) and n not in pkg.__all__
                   and n != "annotations")
    assert stray == [], f"{name} binds public names outside __all__: {stray}"


def test_a_name_exported_by_several_packages_is_one_object() -> None:
    seen: dict[str, tuple[str, object]] = {}
    clashes = []
    for name in PACKAGES:
        pkg = _package(name)
        for n in pkg.__all__:
            obj = getattr(pkg, n)
            if n in seen and seen[n][1] is not obj:
                clashes.append(f"{n}: {seen[n][0]}.{n} is not {name}.{n}")
            seen.setdefault(n, (name, obj))
    assert clashes == []


def test_exported_classes_are_defined_in_the_package_or_below() -> None:
    """A package re-exports only its own objects or those of a layer below (never one above)."""
    below = {"hoard": set(PACKAGES), "hoard.actors": {"hoard.actors", "hoard.storage"},
             "hoard.storage": {"hoard.storage"}}
    bad = []
    for name in PACKAGES:
        pkg = _package(name)
        for n in pkg.__all__:
            module = getattr(getattr(pkg, n), "__module__", None)
            if isinstance(module, str) and _layer_of(module) is not None and _layer_of(module) not in below[name]:
                bad.append(f"{name}.{n} comes from {module}")
    assert bad == []


def test_no_module_reaches_into_another_packages_private_modules() -> None:
    files = [p for folder in ("runtime", "actors", "storage", "tests") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50  # the scan found the code
    bad = []
    for path in files:
        rel = path.relative_to(ROOT)
        owner = _owner(rel)
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            layer = _layer_of(module)
            if layer is None or layer == owner or not _is_private(module) or _allowed(rel, module):
                continue
            bad.append(f"{rel}:{line} imports {module} (use {layer}'s public face)")
    assert bad == []


def test_the_scan_sees_a_reach_in() -> None:
    """The scan above is not vacuous: it flags the forms of import a reach-in takes."""
    tree = ast.parse("import hoard.actors._cell as c\nfrom hoard.storage._codec import X\n"
                     "from hoard.actors import _messages\nfrom hoard.actors import Get\n")
    private = [m for _, m in _imported_modules(tree) if _is_private(m)]
    assert private == ["hoard.actors._cell", "hoard.storage._codec", "hoard.actors._messages"]
    assert _owner(Path("runtime/_system.py")) == "hoard"
    assert _owner(Path("tests/reliability/test_fuzz.py")) is None
