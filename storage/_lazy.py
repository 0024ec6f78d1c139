"""Modules imported at their first use. The "postgres" extra (psycopg, its C binding and its pool)
took about 130 ms of the 490 ms of ``import hoard`` (``python -X importtime``), paid by every
command-line call and every program on SQLite; only PostgreSQL stores need it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "installed"]


class LazyModule:
    """Stands for module `name`: the first attribute read imports it (`ImportError` if it is not
    installed); later reads go to the module. Safe from any thread (the import system locks)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)


def installed(*names: str) -> bool:
    """Whether every one of `names` can be imported (without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in names)
