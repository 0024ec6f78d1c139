"""`hoard export` / `hoard import`: exact round trips, subsets, refusals, damaged archives."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hoard import open_system
from hoard.cli._archive import read_archive
from hoard.storage import ContextState, CreateContext, SQLiteStore

from .conftest import NO_DEFAULT, Hoard, no_traceback


def _everything(hoard: Hoard, path: Path) -> dict[str, Any]:
    """Every context of a store as the CLI reports it: state, metadata, times, recovery points."""
    out = {}
    for c in hoard("ls", str(path), "--json").json():
        shown = hoard("show", str(path), c["id"], "--json").json()
        rps = hoard("history", str(path), c["id"], "--json").json()["recovery_points"]
        states = [hoard("show", str(path), c["id"], "--version", str(rp["version"]), "--json").json() for rp in rps]
        out[c["id"]] = {"state": {k: shown[k] for k in ("version", "data", "metadata", "created_at", "updated_at")},
                        "recovery_points": rps, "rp_data": [(s["data"], s["metadata"]) for s in states]}
    return out


def test_export_then_import_reproduces_every_context_exactly(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive, copy = tmp_path / "all.hoard", tmp_path / "copy.db"
    exported = hoard("export", str(store), str(archive), "--json").json()
    assert (exported["contexts"], exported["recovery_points"]) == (3, 2)
    imported = hoard("import", str(copy), str(archive), "--json").json()
    assert [c["id"] for c in imported["contexts"]] == ["cart-42", "cart-7", "user.ana"]
    assert _everything(hoard, copy) == _everything(hoard, store)
    assert hoard("verify", str(copy), "--json").json()["ok"] is True
    # and the recovery point sequence: the next id is the one the original would have given
    with open_system(copy, adapter_config=NO_DEFAULT) as s:
        assert s.manager.create_recovery_point("cart-42").id == 3
        assert s.manager.create_recovery_point("cart-7").id == 1


def test_export_of_an_import_gives_the_same_records(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    first, copy, second = tmp_path / "1.hoard", tmp_path / "copy.db", tmp_path / "2.hoard"
    assert hoard("export", str(store), str(first)).code == 0
    assert hoard("import", str(copy), str(first)).code == 0
    assert hoard("export", str(copy), str(second)).code == 0
    assert list(read_archive(str(first))) == list(read_archive(str(second)))


def test_export_a_subset_by_prefix_or_id(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    carts = tmp_path / "carts.hoard"
    assert hoard("export", str(store), str(carts), "--prefix", "cart-", "--json").json()["contexts"] == 2
    one = tmp_path / "one.hoard"
    assert hoard("export", str(store), str(one), "--id", "user.ana", "--json").json()["contexts"] == 1
    assert hoard("import", str(tmp_path / "u.db"), str(one)).code == 0
    assert [c["id"] for c in hoard("ls", str(tmp_path / "u.db"), "--json").json()] == ["user.ana"]
    r = hoard("export", str(store), str(tmp_path / "x.hoard"), "--id", "nope")
    assert r.code == 1 and "context 'nope' does not exist" in r.err


def test_export_does_not_overwrite_without_force(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    archive.write_bytes(b"keep me")
    r = hoard("export", str(store), str(archive))
    assert r.code == 1 and "--force" in r.err and archive.read_bytes() == b"keep me"
    assert hoard("export", str(store), str(archive), "--force").code == 0
    assert archive.read_bytes().startswith(b"HOARDARC")
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


def test_import_refuses_existing_contexts_unless_replace(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    other = tmp_path / "other.db"
    with open_system(other, adapter_config=NO_DEFAULT) as s:
        s.manager.create("cart-7", {"local": True})
    r = hoard("import", str(other), str(archive))
    assert r.code == 1 and "already exist" in r.err and "'cart-7'" in r.err and "--replace" in r.err
    no_traceback(r)
    assert [c["id"] for c in hoard("ls", str(other), "--json").json()] == ["cart-7"]  # nothing imported
    result = hoard("import", str(other), str(archive), "--replace", "--json").json()
    assert {c["id"]: c["replaced"] for c in result["contexts"]} == {"cart-42": False, "cart-7": True,
                                                                    "user.ana": False}
    assert hoard("show", str(other), "cart-7", "--json").json()["data"] == {"items": []}


def test_replace_never_takes_a_version_or_recovery_point_id_back(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive), "--id", "cart-42").code == 0
    hoard("restore", str(store), "cart-42", "1")  # v12 in the store; the archive holds v11
    with open_system(store, adapter_config=NO_DEFAULT) as s:
        s.manager.create_recovery_point("cart-42")  # rp 3
    result = hoard("import", str(store), str(archive), "--replace", "--json").json()["contexts"][0]
    assert result["version"] == 13 and "versions never go back" in result["note"]
    h = hoard("history", str(store), "cart-42", "--json").json()
    assert [rp["id"] for rp in h["recovery_points"]] == [4, 5]
    assert hoard("show", str(store), "cart-42", "--key", "coupon", "--json").json()["value"] == "X1"


def test_a_damaged_or_truncated_archive_is_refused_and_changes_nothing(hoard: Hoard, store: Path,
                                                                       tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    data = archive.read_bytes()
    target = tmp_path / "t.db"
    for name, content, problem in (
            ("flipped.hoard", data[:200] + bytes([data[200] ^ 0x01]) + data[201:], "checksum"),
            ("short.hoard", data[:-40], "truncated"),
            ("text.hoard", b"not an archive at all", "not a hoard archive")):
        bad = tmp_path / name
        bad.write_bytes(content)
        r = hoard("import", str(target), str(bad))
        assert r.code == 1, name
        assert problem in r.err, (name, r.err)
        no_traceback(r)
        assert not target.exists()  # verified before anything was written


def test_import_of_a_missing_archive_is_a_usage_error(hoard: Hoard, tmp_path: Path) -> None:
    r = hoard("import", str(tmp_path / "s.db"), str(tmp_path / "missing.hoard"))
    assert r.code == 2 and "does not exist" in r.err


def test_a_failing_import_leaves_the_store_unchanged(hoard: Hoard, tmp_path: Path) -> None:
    """More operations than the old batches of 1,000, with the very last context refused by the store:
    nothing of the archive may be left behind (one transaction)."""
    source, target, archive = tmp_path / "source.db", tmp_path / "target.db", tmp_path / "a.hoard"
    many = 1_100
    store = SQLiteStore(source)
    store.open()
    try:
        store.commit([CreateContext(ContextState(f"c-{i:04d}", 1, {"i": i})) for i in range(many)])
    finally:
        store.close()
    assert hoard("export", str(source), str(archive)).code == 0
    with open_system(target, adapter_config=NO_DEFAULT) as s:
        s.manager.create("mine", {"local": True})
    db = sqlite3.connect(target)  # a real failure inside the store's transaction, at the last context
    with db:
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON contexts WHEN NEW.id = 'c-{many - 1:04d}' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
    db.close()
    r = hoard("import", str(target), str(archive))
    assert r.code == 1, r.err
    assert [c["id"] for c in hoard("ls", str(target), "--json").json()] == ["mine"]
    assert "nothing was imported" in r.err, r.err
    no_traceback(r)
    assert hoard("verify", str(target), "--json").json()["ok"] is True
    db = sqlite3.connect(target)
    with db:
        db.execute("DROP TRIGGER refuse")
    db.close()
    assert len(hoard("import", str(target), str(archive), "--json").json()["contexts"]) == many  # now all of it


def test_the_replace_note_compares_versions_truly(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive), "--id", "cart-42").code == 0  # v11, as stored
    note = hoard("import", str(store), str(archive), "--replace", "--json").json()["contexts"][0]["note"]
    assert note.startswith("the stored v11 is the same version as the archived v11: the archived data written "
                           "as v12"), note
    note = hoard("import", str(store), str(archive), "--replace", "--json").json()["contexts"][0]["note"]
    assert note.startswith("the stored v12 is newer than the archived v11"), note
    assert hoard("show", str(store), "cart-42", "--json").json()["version"] == 13


def test_import_help_says_what_import_does(hoard: Hoard) -> None:
    text = " ".join(hoard("import", "--help").out.split())
    assert "all of it in one transaction: the import is done entirely or not at all" in text
