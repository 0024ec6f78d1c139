"""`hoard export` / `hoard import`: exact round trips, subsets, refusals, damaged archives."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from hoard import open_system
from hoard.cli._archive import ARCHIVE_FORMAT, _Writer, read_archive
from hoard.storage import FORMAT_VERSION, ContextState, CreateContext, SQLiteStore

from .conftest import HOARD, NO_DEFAULT, Hoard, command_env, no_traceback


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
    assert result["version"] == 14 and "versions never go back" in result["note"]
    h = hoard("history", str(store), "cart-42", "--json").json()
    assert [rp["id"] for rp in h["recovery_points"]] == [4, 5]
    assert hoard("show", str(store), "cart-42", "--key", "coupon", "--json").json()["value"] == "X1"


def test_a_replace_gives_the_deletion_and_the_imported_state_versions_of_their_own(hoard: Hoard, store: Path,
                                                                                   tmp_path: Path) -> None:
    # the replaced context's deletion is a feed entry at the stored version + 1; the imported state
    # was written at that same version, so a consumer keyed by (context, version) saw one change twice
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive), "--id", "cart-42").code == 0  # v11, as stored
    for stored in (11, 13):  # the archived v11 at the stored version, then below it
        assert hoard("import", str(store), str(archive), "--replace").code == 0
        with open_system(store, adapter_config=NO_DEFAULT) as s:
            tail = [(e.version, e.deleted) for e in s.changes(timeout=0) if e.context_id == "cart-42"][-2:]
        assert tail == [(stored + 1, True), (stored + 2, False)]


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
                           "as v13"), note
    note = hoard("import", str(store), str(archive), "--replace", "--json").json()["contexts"][0]["note"]
    assert note.startswith("the stored v13 is newer than the archived v11"), note
    assert hoard("show", str(store), "cart-42", "--json").json()["version"] == 15


def test_import_help_says_what_import_does(hoard: Hoard) -> None:
    text = " ".join(hoard("import", "--help").out.split())
    assert "all of it in one transaction: the import is done entirely or not at all" in text


def _state(cid: str = "x", version: int = 3, created: Any = 1.0, updated: Any = 2.0) -> dict[str, Any]:
    return {"id": cid, "version": version, "data": {"a": 1}, "metadata": {}, "created_at": created,
            "updated_at": updated}


def _rp(rp_id: Any = 1, version: int = 2, created_at: Any = 5.0) -> dict[str, Any]:
    return {"type": "recovery_point", "id": rp_id, "version": version, "label": "l", "created_at": created_at,
            "state": _state(version=version)}


def _craft(path: Path, contexts: list[dict[str, Any]], archive_format: int = ARCHIVE_FORMAT) -> Path:
    """A well-formed archive (magic, frames, checksums, end record all right) holding `contexts`:
    each a context record, with its recovery point records under "rps"."""
    with path.open("wb") as f:
        w = _Writer(f)
        w.record({"type": "header", "archive_format": archive_format, "store_format": FORMAT_VERSION,
                  "created_at": 1.0, "hoard": "test", "source": "test"})
        n_rps = 0
        for c in contexts:
            rps = c.get("rps", [])
            w.record({"type": "context", **{k: v for k, v in c.items() if k != "rps"}, "recovery_points": len(rps)})
            for rp in rps:
                w.record(rp)
            n_rps += len(rps)
        w.end(len(contexts), n_rps)
    return path


def test_an_archive_of_format_1_without_ttls_still_imports(hoard: Hoard, tmp_path: Path) -> None:
    archive = _craft(tmp_path / "old.hoard", [{"state": _state(), "next_rp_id": 2, "rps": [_rp()]}],
                     archive_format=1)
    assert hoard("import", str(tmp_path / "s.db"), str(archive)).code == 0
    assert hoard("show", str(tmp_path / "s.db"), "x", "--json").json()["data"] == {"a": 1}


def test_an_archive_with_a_bad_ttl_is_refused(hoard: Hoard, tmp_path: Path) -> None:
    for bad in (-1, 0, "3600", True):
        archive = _craft(tmp_path / "t.hoard", [{"state": _state(), "next_rp_id": 1, "ttl": bad}])
        r = hoard("import", str(tmp_path / "s.db"), str(archive))
        assert r.code == 1 and "record 1 has a bad 'ttl'" in r.err, (bad, r.err)
        no_traceback(r)
        assert not (tmp_path / "s.db").exists()


def test_import_from_a_pipe_reads_the_archive_once(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive, copy = tmp_path / "all.hoard", tmp_path / "copy.db"
    assert hoard("export", str(store), str(archive)).code == 0
    piped = subprocess.run([*HOARD, "import", str(copy), "/dev/stdin", "--json"], input=archive.read_bytes(),  # noqa: S603
                           cwd=tmp_path, env=command_env(), capture_output=True, timeout=120, check=False)
    assert piped.returncode == 0, piped.stderr
    assert [c["id"] for c in json.loads(piped.stdout)["contexts"]] == ["cart-42", "cart-7", "user.ana"]
    assert _everything(hoard, copy) == _everything(hoard, store)


def test_a_truncated_archive_from_a_pipe_creates_no_store(tmp_path: Path, store: Path, hoard: Hoard) -> None:
    archive, copy = tmp_path / "all.hoard", tmp_path / "copy.db"
    assert hoard("export", str(store), str(archive)).code == 0
    piped = subprocess.run([*HOARD, "import", str(copy), "/dev/stdin"], input=archive.read_bytes()[:-10],  # noqa: S603
                           cwd=tmp_path, env=command_env(), capture_output=True, timeout=120, check=False)
    assert piped.returncode == 1 and b"truncated" in piped.stderr and b"Traceback" not in piped.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("copy")] == []  # no store, no lock file


_VALID = {"state": _state(), "next_rp_id": 2, "rps": [_rp()]}
_BAD_ARCHIVES = {
    "a recovery point time that is no number": ({**_VALID, "rps": [_rp(created_at="abc")]}, 2, "created_at"),
    "a recovery point time out of range": ({**_VALID, "rps": [_rp(created_at=1e20)]}, 2, "created_at"),
    "a recovery point label that is no string": (
        {**_VALID, "rps": [{**_rp(), "label": {"a": 1}}]}, 2, "label"),
    "a recovery point newer than its context": ({**_VALID, "rps": [_rp(version=10)]}, 2, "newer than"),
    "a recovery point id 0": ({**_VALID, "next_rp_id": 1, "rps": [_rp(rp_id=0)]}, 2, "'id'"),
    "the same recovery point id twice": ({**_VALID, "next_rp_id": 2, "rps": [_rp(), _rp()]}, 3, "'id'"),
    "a recovery point id at or past the next id": ({**_VALID, "next_rp_id": 1}, 1, "next_rp_id"),
    "a next recovery point id past what can be reproduced": ({**_VALID, "next_rp_id": 10**12}, 1, "next_rp_id"),
    "context times out of range": ({"state": _state(created=1e20, updated=1e20), "next_rp_id": 1}, 1, "times"),
    "a version past what a store holds": ({"state": _state(version=2**63), "next_rp_id": 1}, 1, "version"),
}


def test_an_archive_with_impossible_contents_is_refused_before_anything_is_written(
        hoard: Hoard, tmp_path: Path) -> None:
    for why, (context, index, what) in _BAD_ARCHIVES.items():
        archive = _craft(tmp_path / "bad.hoard", [context])
        r = hoard("import", str(tmp_path / "s.db"), str(archive), "--json", timeout=60)
        assert r.code == 1, (why, r.out, r.err)
        error = json.loads(r.err)
        assert error["type"] == "CorruptStateError", (why, error)
        assert f"record {index}" in error["error"] and what in error["error"], (why, error)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hoard"], why  # no store, no lock file


def test_export_to_an_empty_name_or_onto_its_store_is_a_usage_error(hoard: Hoard, store: Path) -> None:
    before = store.read_bytes()
    for out, force in (("", []), (str(store), ["--force"]), (f"{store.parent}/./{store.name}", ["--force"])):
        r = hoard("export", str(store), out, *force)
        assert r.code == 2, (out, r.err)
        assert ".tmp-" not in r.err
        no_traceback(r)
    assert store.read_bytes() == before


def test_an_archive_is_readable_by_its_owner_only_like_a_store(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    assert archive.stat().st_mode & 0o777 == store.stat().st_mode & 0o777 == 0o600


def test_a_refused_import_into_a_file_that_is_no_store_leaves_no_lock_file(hoard: Hoard, store: Path,
                                                                           tmp_path: Path) -> None:
    archive, text = tmp_path / "a.hoard", tmp_path / "notastore.txt"
    assert hoard("export", str(store), str(archive)).code == 0
    text.write_text("some text\n")
    r = hoard("import", str(text), str(archive))
    assert r.code == 1 and "not a hoard store" in r.err, r.err
    assert text.read_text() == "some text\n" and not (tmp_path / "notastore.txt.lock").exists()
