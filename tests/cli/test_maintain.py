"""`hoard restore`, `verify [--fix]`, `compact`: end to end, on real stores, including refusals."""

from __future__ import annotations

import json
from pathlib import Path

from hoard import open_system

from .conftest import CART_META, CART_V3, CART_V11, NO_DEFAULT, Hoard, damage_snapshot, no_traceback


def test_restore_makes_the_recovery_point_state_a_new_version(hoard: Hoard, store: Path) -> None:
    r = hoard("restore", str(store), "cart-42", "1", "--json").json()
    assert r == {"id": "cart-42", "recovery_point": 1, "recovery_point_version": 3, "previous_version": 11,
                 "version": 12}
    shown = hoard("show", str(store), "cart-42", "--json").json()
    assert (shown["version"], shown["data"], shown["metadata"]) == (12, CART_V3, {})
    assert "recovery point 2 (the data of v7): v12 -> v13" in hoard("restore", str(store), "cart-42", "2").out


def test_restore_of_a_missing_recovery_point_or_context_fails_cleanly(hoard: Hoard, store: Path) -> None:
    r = hoard("restore", str(store), "cart-42", "9")
    assert r.code == 1 and "no recovery point 9 (it has: 1, 2)" in r.err
    no_traceback(r)
    r = hoard("restore", str(store), "nope", "1")
    assert r.code == 1 and "'nope'" in r.err
    no_traceback(r)
    assert hoard("restore", str(store), "cart-42", "one").code == 2
    assert hoard("show", str(store), "cart-42", "--json").json()["version"] == 11


def test_writing_commands_refuse_while_the_store_is_open_elsewhere(hoard: Hoard, store: Path,
                                                                   tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    with open_system(store, adapter_config=NO_DEFAULT):
        for args in (["restore", str(store), "cart-42", "1"], ["compact", str(store)],
                     ["verify", str(store), "--fix"], ["import", str(store), str(archive), "--replace"]):
            r = hoard(*args)
            assert r.code == 1, args
            assert "is already open for writing by another system or process" in r.err
            assert "Stop that program first" in r.err
            no_traceback(r)
    shown = hoard("show", str(store), "cart-42", "--json").json()
    assert (shown["version"], shown["data"]) == (11, CART_V11)


def test_verify_reports_a_clean_store(hoard: Hoard, store: Path) -> None:
    assert hoard("verify", str(store), "--json").json() == {"ok": True, "contexts": 3, "issues": []}
    r = hoard("verify", str(store))
    assert r.code == 0 and "3 contexts checked: ok" in r.out


def test_verify_finds_damage_exits_1_and_fix_repairs_what_loses_nothing(hoard: Hoard, store: Path) -> None:
    damage_snapshot(store, "cart-42", 1)  # the older snapshot: the newer one plus the journal cover it
    r = hoard("verify", str(store), "--json")
    assert r.code == 1
    report = json.loads(r.out)
    assert report["ok"] is False
    assert any(i["context_id"] == "cart-42" and i["what"] == "snapshot" for i in report["issues"])
    table = hoard("verify", str(store))
    assert table.code == 1 and "cart-42" in table.out
    assert f"run `hoard verify --fix {store}`" in table.out  # a command that runs as written
    fixed = hoard("verify", str(store), "--fix", "--json")
    assert fixed.code == 0, fixed.out
    assert all(i["fixed"] for i in fixed.json()["issues"])
    assert hoard("verify", str(store), "--json").json()["ok"] is True
    assert hoard("show", str(store), "cart-42", "--json").json()["data"] == CART_V11


def test_verify_of_a_store_whose_schema_text_is_not_utf8_reports_damage_without_a_traceback(
        hoard: Hoard, store: Path) -> None:
    data = bytearray(store.read_bytes())
    data[data.find(b"hoard_meta") + 2] = 0xF2  # one damaged byte in a table name (sqlite_master)
    store.write_bytes(bytes(data))
    for args in (["verify", str(store)], ["verify", str(store), "--json"], ["ls", str(store)]):
        r = hoard(*args)
        assert r.code == 1 and "not valid UTF-8" in r.err, (args, r)
        no_traceback(r)


def test_compact_keeps_every_context_exactly_and_drops_the_journal(hoard: Hoard, store: Path) -> None:
    before = {c["id"]: hoard("show", str(store), c["id"], "--json").json()
              for c in hoard("ls", str(store), "--json").json()}
    rps_before = hoard("history", str(store), "cart-42", "--json").json()["recovery_points"]
    result = hoard("compact", str(store), "--json").json()
    assert result["failed"] == [] and result["contexts_rewritten"] >= 1 and result["journal_entries_removed"] > 0
    assert result["bytes_after"] <= result["bytes_before"]
    after = {c["id"]: hoard("show", str(store), c["id"], "--json").json()
             for c in hoard("ls", str(store), "--json").json()}
    assert after == before
    h = hoard("history", str(store), "cart-42", "--json").json()
    assert h["snapshots"] == [11] and h["journal"] == [] and h["recovery_points"] == rps_before
    assert hoard("verify", str(store), "--json").json()["ok"] is True
    assert "compacted 0 contexts" in hoard("compact", str(store)).out  # nothing left to do
    with open_system(store, adapter_config=NO_DEFAULT) as s:  # the recovery point sequence survived
        t = s.manager.tracker("cart-42")
        assert t.create_recovery_point().id == 3
        assert (t.version, dict(t.metadata())) == (11, CART_META)
