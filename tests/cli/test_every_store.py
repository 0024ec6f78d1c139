"""The command line on every kind of store: a SQLite file and a ``postgresql://`` URL.

* The same data, written through the store API into both, gives the same ``--json`` shapes from
  every command (ls, show, history, stats, verify, export, import, compact).
* Writing commands take the store's single-writer rules: with a running system holding the store (the
  SQLite writer lock; on PostgreSQL the lease of an active context), compact, verify --fix and import
  refuse with a typed error, exit code 1 and one JSON error object, and change nothing.
* ``hoard verify --json``, ``show``, ``history``, ``ls`` and ``stats --json``, run in a loop while
  another process writes to the store as fast as it can, report no issue and no error, and what each
  prints agrees with itself (stats' totals are the sums over its contexts; history's journal, changes
  and rebuildable range end at the version it names): each command reads through one read view. The
  writer's final state verifies clean.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoard import open_system
from hoard.storage import (
    Append,
    Change,
    CreateContext,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    SetTTL,
    apply_change,
    freeze_mapping,
    new_state,
    open_store,
)
from tests.pg import url_for
from tests.storage import busy_writer

from .conftest import NO_DEFAULT, Hoard, Result, no_traceback

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _target(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str = "state.db") -> str:
    if kind == "sqlite":
        return str(tmp_path / name)
    schema = request.getfixturevalue("pg_schema")
    if name != "state.db":  # a second store on the server: a schema of its own, dropped afterwards
        from tests.pg import create_schema, drop_schema, new_schema_name  # noqa: PLC0415

        dsn = request.getfixturevalue("pg_dsn")
        schema = new_schema_name()
        create_schema(dsn, schema)
        request.addfinalizer(lambda: drop_schema(dsn, schema))
    return url_for(request.getfixturevalue("pg_dsn"), schema)


def _populate(target: str, now: float | None = None) -> None:
    """Through the store API: cart (v1..v9, snapshots v1 and v6, recovery point 1 at v3, journal after
    v6) and user (v1)."""
    store = open_store(target, readonly=False)
    try:
        now = time.time() if now is None else now
        cart = new_state("cart", freeze_mapping({"items": []}), now=now)
        ops: list[Any] = [CreateContext(cart), CreateContext(new_state("user", freeze_mapping({"n": "a"}), now=now))]
        for v in range(2, 10):
            change = Change(v, now + v / 1000, freeze_mapping({"items": list(range(v)), f"k{v}": v}),
                            (f"k{v - 1}",) if v % 2 == 0 else ())
            cart = apply_change(cart, change)
            ops.append(Append("cart", change))
            if v == 3:
                ops.append(PutRecoveryPoint(RecoveryPoint(1, "cart", 3, "three", now, cart), keep=3))
            if v == 6:
                ops.append(PutSnapshot(cart))
        store.commit(ops)
    finally:
        store.close()


def _shape(value: Any) -> Any:
    """The structure of a JSON value: keys, list element shapes and value types; None (a file size on
    PostgreSQL) stands for any type."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if value is None:
        return None
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _same_shape(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return not a or not b or _same_shape(a[0], b[0])
    return bool(a == b)


def _outputs(hoard: Hoard, target: str, other: str, archive: str) -> dict[str, Any]:
    out = {
        "ls": hoard("ls", target, "--json").json(),
        "show": hoard("show", target, "cart", "--json").json(),
        "show_key": hoard("show", target, "cart", "--key", "items", "--json").json(),
        "show_version": hoard("show", target, "cart", "--version", "7", "--json").json(),
        "history": hoard("history", target, "cart", "--json").json(),
        "stats": hoard("stats", target, "--json").json(),
        "verify": hoard("verify", target, "--json").json(),
        "export": hoard("export", target, archive, "--json").json(),
        "import": hoard("import", other, archive, "--json").json(),
        "imported": hoard("show", other, "cart", "--json").json(),
        "compact": hoard("compact", target, "--json").json(),
        "after_compact": hoard("show", target, "cart", "--json").json(),
    }
    missing = hoard("show", target, "nope", "--json")
    assert missing.code == 1
    out["error"] = json.loads(missing.err)
    return out


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_every_command_gives_the_same_json_shapes_on_sqlite_and_postgresql(
        hoard: Hoard, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    results = {}
    now = time.time()
    for kind in ("sqlite", "postgres"):
        target = _target(kind, request, tmp_path)
        _populate(target, now)
        other = _target(kind, request, tmp_path, "other.db")
        results[kind] = out = _outputs(hoard, target, other, str(tmp_path / f"{kind}.hoard"))
        assert [r["id"] for r in out["ls"]] == ["cart", "user"] and out["ls"][0]["version"] == 9
        assert out["show"]["version"] == 9 and out["show"]["source"] == "current"
        assert out["show_version"]["version"] == 7 and out["show_version"]["source"] == "snapshot v6 + 1 journal entry"
        assert out["history"]["snapshots"] == [1, 6] and out["history"]["rebuildable"] == {"from": 1, "to": 9}
        assert [j["version"] for j in out["history"]["journal"]] == [7, 8, 9]
        assert out["stats"]["contexts"] == 2 and out["stats"]["versions_total"] == 10
        assert out["stats"]["recovery_points"]["count"] == 1
        assert out["verify"] == {"ok": True, "contexts": 2, "issues": []}
        assert out["export"]["contexts"] == 2
        assert (out["imported"]["data"], out["imported"]["version"]) == (out["show"]["data"], 9)
        # v2..v9: the older snapshot (v1) kept them all
        assert out["compact"]["failed"] == [] and out["compact"]["journal_entries_removed"] == 8
        assert out["after_compact"] == out["show"]
        assert out["error"] == {"error": out["error"]["error"], "type": "ContextNotFoundError", "exit_code": 1}
        assert f"hoard ls {target}" in out["error"]["error"]  # the hint names a command that runs as written
    assert results["postgres"]["stats"]["file_bytes"] is None and results["sqlite"]["stats"]["file_bytes"] > 0
    for name, sqlite_out in results["sqlite"].items():
        assert _same_shape(_shape(sqlite_out), _shape(results["postgres"][name])), name
    # the same data gives the same answers, not only the same shapes
    for name in ("show", "show_key", "show_version", "verify"):
        assert results["sqlite"][name] == results["postgres"][name], name


def _refused(r: Result, kind: str) -> dict[str, Any]:
    assert r.code == 1, (r.out, r.err)
    no_traceback(r)
    (line,) = r.err.splitlines()
    error = json.loads(line)
    expected = "StoreLockedError" if kind == "sqlite" else "ContextOwnedElsewhereError"
    assert error["type"] == expected and error["exit_code"] == 1, error
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.timeout(300)
def test_writing_commands_refuse_while_a_running_system_holds_the_store(
        hoard: Hoard, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    target = _target(kind, request, tmp_path)
    _populate(target)
    archive = str(tmp_path / "a.hoard")
    assert hoard("export", target, archive).code == 0
    before = hoard("show", target, "cart", "--json").json()
    with open_system(target, adapter_config=NO_DEFAULT) as system:
        system.adapter.activate("cart")  # on PostgreSQL: the system takes the context's lease
        for args in (["compact", target], ["verify", target, "--fix"], ["import", target, archive, "--replace"]):
            error = _refused(hoard(*args, "--json"), kind)
            if kind == "sqlite":
                assert "Stop that program first" in error["error"], error
            else:
                assert "'cart'" in error["error"] and f"cannot {args[0] if args[0] != 'verify' else 'repair'}" \
                    in error["error"], error
        # reading still works meanwhile, and nothing changed
        assert hoard("show", target, "cart", "--json").json() == before
        assert hoard("history", target, "cart", "--json").json()["journal"] != []  # not compacted
        system.manager.update("cart", {"after": True})  # the system still owns and writes the context
    assert hoard("show", target, "cart", "--json").json()["data"]["after"] is True
    assert hoard("compact", target, "--json").json()["failed"] == []  # once it stopped, compact runs


@contextlib.contextmanager
def _busy_writer(target: str, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """busy_writer.py committing to `target` as fast as it can for the block (started and ready on
    entry, stopped and exited 0 on exit); yields the lines it printed (the last one: its final
    versions)."""
    stop = tmp_path / "stop"
    cfg = {"target": target, "contexts": 4, "commits": 10**9, "stop_file": str(stop)}
    try:
        with busy_writer.started(cfg) as (child, lines):
            yield lines
            assert child.poll() is None, "the writer ended before the readers did"
            stop.touch()
            assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    finally:
        stop.touch()


def _verified_clean(hoard: Hoard, target: str, done: dict[str, int]) -> None:
    final = open_store(target)
    try:
        assert final.verify() == []
        assert {cid: final.load(cid).version for cid in done} == done  # type: ignore[union-attr]
    finally:
        final.close()
    assert hoard("verify", target, "--json").json() == {"ok": True, "contexts": 4, "issues": []}


def _history_disagrees(h: dict[str, Any]) -> str | None:
    """What in one ``hoard history --json`` does not agree with itself (None: all of it does)."""
    version, snapshots, journal, changes = h["version"], h["snapshots"], h["journal"], h["changes"]
    newest = journal[-1]["version"] if journal else snapshots[-1] if snapshots else None
    if newest != version or (changes and changes[-1]["version"] != version) \
            or h["rebuildable"] is None or h["rebuildable"]["to"] != version \
            or any(j["version"] <= snapshots[-1] for j in journal):
        return (f"history of v{version}: snapshots {snapshots}, journal up to v{newest}, changes up to "
                f"{changes[-1]['version'] if changes else None}, rebuildable {h['rebuildable']}")
    return None


def _stats_disagree(st: dict[str, Any]) -> str | None:
    """What in one ``hoard stats --json`` does not agree with itself: with at most five contexts,
    `largest` lists every one, so their stored bytes add up to the snapshot and journal totals."""
    listed = sum(c["stored_bytes"] for c in st["largest"])
    totals = st["snapshots"]["stored_bytes"] + st["journal"]["stored_bytes"]
    if st["contexts"] != len(st["largest"]) or listed != totals:
        return (f"stats: {st['contexts']} contexts, snapshots {st['snapshots']} + journal {st['journal']}, but "
                f"the contexts listed hold {listed} bytes ({st['largest']})")
    return None


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.timeout(600)
def test_reading_commands_in_a_loop_under_a_busy_writer_report_nothing_wrong_and_each_see_one_state(
        hoard: Hoard, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """verify and show report no issue and no error. history, ls and stats read several times each
    (stats: the totals and the contexts; history: the context, its journal, snapshots, recovery
    points and the states its changes start from); all of a command's reads go through one read
    view, so what it prints agrees with itself, whatever commits meanwhile."""
    target = _target(kind, request, tmp_path)
    commands = {"verify": ("verify", target, "--json"), "show": ("show", target, "c0", "--json"),
                "history": ("history", target, "c0", "--json"), "ls": ("ls", target, "--json"),
                "stats": ("stats", target, "--json")}
    failures: list[str] = []
    versions: set[int] = set()
    with _busy_writer(target, tmp_path) as lines:
        for _ in range(3):
            results = {name: hoard(*args) for name, args in commands.items()}
            failures += [f"{name}: {r.code} {r.out} {r.err}" for name, r in results.items() if r.code != 0]
            if failures:
                continue
            if results["verify"].json() != {"ok": True, "contexts": 4, "issues": []}:
                failures.append(f"verify: {results['verify'].out}")
            versions.add(results["show"].json()["version"])
            failures += [x for x in (_history_disagrees(results["history"].json()),
                                     _stats_disagree(results["stats"].json())) if x]
            listed = results["ls"].json()
            if [c["id"] for c in listed] != ["c0", "c1", "c2", "c3"] \
                    or any(c["journal_entries"] < c["version"] - c["snapshot_version"] for c in listed):
                failures.append(f"ls: {listed}")
    assert failures == [], failures[:5]
    assert len(versions) >= 2, f"the reads did not overlap the writes (versions of c0 seen: {versions})"
    _verified_clean(hoard, target, lines[-1]["done"])


def _expired(target: str, now: float) -> list[str]:
    store = open_store(target)
    try:
        return store.expired(now, None)
    finally:
        store.close()


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.timeout(300)
def test_compact_and_export_import_keep_a_contexts_own_ttl(
        hoard: Hoard, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    target = _target(kind, request, tmp_path)
    _populate(target)
    store = open_store(target, readonly=False)
    try:
        store.commit([SetTTL("cart", 3600.0)])
    finally:
        store.close()
    later = time.time() + 7200  # past cart's own ttl; user has none (and no default is given)
    assert _expired(target, later) == ["cart"]
    assert hoard("compact", target, "--json").json()["contexts_rewritten"] == 1
    assert _expired(target, later) == ["cart"]  # compact rewrote cart: its ttl came along
    assert _expired(target, time.time()) == []
    archive, other = str(tmp_path / "ttl.hoard"), _target(kind, request, tmp_path, "other.db")
    assert hoard("export", target, archive).code == 0
    assert hoard("import", other, archive).code == 0
    assert _expired(other, later) == ["cart"]
    assert hoard("import", other, archive, "--replace").code == 0  # a replaced context takes the archived ttl
    assert _expired(other, later) == ["cart"]
