"""Fixtures for the CLI tests: run the real command line in a subprocess, on real SQLite stores
written through `hoard.open_system` (every system is stopped before the command runs)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from hoard import ContextAdapterConfig, open_system
from hoard.storage import Append, Change, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


Hoard = Callable[..., Result]


def command_env() -> dict[str, str]:
    """The environment the CLI tests run ``hoard`` in: not a TTY, no forced colour."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    return env


#: the command line the tests run: the same as the `hoard` console script
HOARD = [sys.executable, "-m", "hoard.cli"]


@pytest.fixture
def hoard(tmp_path: Path) -> Hoard:
    """``hoard(*args)`` runs ``python -m hoard.cli *args`` in `tmp_path` (not a TTY) and returns
    its exit code and output."""
    env = command_env()

    def run(*args: str, timeout: float = 120) -> Result:
        proc = subprocess.run([*HOARD, *args], cwd=tmp_path, env=env,  # noqa: S603
                              capture_output=True, text=True, timeout=timeout, check=False)
        return Result(proc.returncode, proc.stdout, proc.stderr)
    return run


def damage_snapshot(path: Path, context_id: str, version: int) -> None:
    """Flip a byte inside one stored snapshot (its checksum no longer matches)."""
    db = sqlite3.connect(path)
    with db:
        (blob,) = db.execute("SELECT blob FROM snapshots WHERE context_id=? AND version=?",
                             (context_id, version)).fetchone()
        damaged = blob[:-3] + bytes([blob[-3] ^ 0xFF]) + blob[-2:]
        db.execute("UPDATE snapshots SET blob=? WHERE context_id=? AND version=?", (damaged, context_id, version))
    db.close()


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err


NO_DEFAULT = ContextAdapterConfig(auto_activate_default=False)

#: what the `store` fixture writes for cart-42 (and what the tests expect to read back)
CART_V3 = {"items": ["apple", "pear"], "total": 12.5}
CART_V9 = {**CART_V3, "note": "café ✓", "nested": {"a": [1, 2, {"b": None}]}}
CART_V11 = {**CART_V9, "total": 20, "coupon": "X1"}
CART_META = {"owner": "ana", "stage": "checkout"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store written through `open_system`, with three contexts:

    * ``cart-42``: 11 versions, metadata, recovery points 1 (v3, labelled) and 2 (v7); snapshots at
      v1 and v9 (the shutdown's), and journal entries v10 and v11 after the newest snapshot (as a
      program killed before its next snapshot leaves them; appended straight to the store);
    * ``cart-7`` (v1) and ``user.ana`` (v2).
    """
    path = tmp_path / "state.db"
    with open_system(path, adapter_config=NO_DEFAULT) as s:
        t = s.adapter.create_and_activate("cart-42")
        t.update({"items": ["apple", "pear"]})                      # v2
        t.set("total", 12.5)                                        # v3
        t.create_recovery_point("before-edit")                      # rp 1: v3
        t.set_metadata("owner", "ana")                              # v4
        t.set("note", "café ✓")                                     # v5
        t.set("tmp", 1)                                             # v6
        t.delete("tmp")                                             # v7
        t.create_recovery_point()                                   # rp 2: v7
        t.set("nested", {"a": [1, 2, {"b": None}]})                 # v8
        t.set_metadata("stage", "checkout")                         # v9
        s.manager.create("cart-7", {"items": []})
        s.manager.create("user.ana", {"name": "Ana"})
        s.manager.update("user.ana", {"age": 41})
    raw = SQLiteStore(path)
    raw.open()
    try:
        now = time.time()
        raw.commit([Append("cart-42", Change(10, now, {"total": 20})),
                    Append("cart-42", Change(11, now + 0.001, {"coupon": "X1"}))])
    finally:
        raw.close()
    return path
