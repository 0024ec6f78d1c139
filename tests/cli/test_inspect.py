"""`hoard ls`, `show`, `history`, `stats`: end to end through the real command, on real stores."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hoard import open_system
from hoard.storage import CreateContext, PutRecoveryPoint, RecoveryPoint, freeze_mapping, new_state, open_store

from .conftest import CART_META, CART_V3, CART_V9, CART_V11, HOARD, NO_DEFAULT, Hoard, command_env, no_traceback


def test_ls_lists_every_context_with_version_sizes_times_and_recovery_points(hoard: Hoard, store: Path) -> None:
    rows = hoard("ls", str(store), "--json").json()
    assert [r["id"] for r in rows] == ["cart-42", "cart-7", "user.ana"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["cart-42"]["version"] == 11 and by_id["cart-42"]["recovery_points"] == 2
    assert by_id["cart-7"]["version"] == 1 and by_id["user.ana"]["version"] == 2
    for r in rows:
        assert r["stored_bytes"] > 0
        assert r["created_at"] <= r["updated_at"] <= time.time()
        assert r["updated"].endswith("Z")


def test_ls_table_shows_the_same_contexts(hoard: Hoard, store: Path) -> None:
    r = hoard("ls", str(store))
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["ID", "VERSION", "STORED", "UPDATED", "RPS"]
    assert lines[1].split()[:2] == ["cart-42", "11"] and lines[1].split()[-1] == "2"
    assert "3 contexts" in r.out
    assert "\x1b[" not in r.out  # no colour when stdout is not a terminal


def test_ls_filters_by_prefix_and_update_time(hoard: Hoard, store: Path) -> None:
    assert [r["id"] for r in hoard("ls", str(store), "--prefix", "cart-", "--json").json()] == ["cart-42", "cart-7"]
    assert hoard("ls", str(store), "--updated-since", "1h", "--json").json() != []
    assert hoard("ls", str(store), "--updated-since", "2999-01-01", "--json").json() == []
    assert "no contexts match" in hoard("ls", str(store), "--prefix", "zzz").out


def test_ls_refuses_a_malformed_time_as_a_usage_error(hoard: Hoard, store: Path) -> None:
    r = hoard("ls", str(store), "--updated-since", "yesterday-ish")
    assert r.code == 2 and "neither a date" in r.err
    no_traceback(r)


def test_show_prints_the_current_state_and_metadata(hoard: Hoard, store: Path) -> None:
    shown = hoard("show", str(store), "cart-42", "--json").json()
    assert shown["version"] == 11 and shown["source"] == "current"
    assert shown["data"] == CART_V11
    assert shown["metadata"] == CART_META
    table = hoard("show", str(store), "cart-42")
    assert table.code == 0 and "café ✓" in table.out and "v11" in table.out and "5 keys" in table.out


def test_show_one_key(hoard: Hoard, store: Path) -> None:
    assert hoard("show", str(store), "cart-42", "--key", "nested", "--json").json() == {
        "id": "cart-42", "version": 11, "key": "nested", "value": CART_V11["nested"]}
    r = hoard("show", str(store), "cart-42", "--key", "missing")
    assert r.code == 1 and "no key 'missing'" in r.err
    no_traceback(r)


def test_show_version_rebuilds_from_a_recovery_point_or_snapshot_and_journal(hoard: Hoard, store: Path) -> None:
    v3 = hoard("show", str(store), "cart-42", "--version", "3", "--json").json()
    assert (v3["version"], v3["data"], v3["metadata"]) == (3, CART_V3, {})
    assert v3["source"] == "recovery point 1"
    v9 = hoard("show", str(store), "cart-42", "--version", "9", "--json").json()
    assert (v9["data"], v9["metadata"]) == (CART_V9, CART_META)
    v6 = hoard("show", str(store), "cart-42", "--version", "6", "--json").json()
    assert v6["data"] == {**CART_V3, "note": "café ✓", "tmp": 1} and v6["source"].startswith("snapshot v1 +")


def test_show_version_that_cannot_be_rebuilt_says_why(hoard: Hoard, store: Path) -> None:
    hoard("compact", str(store))  # drops the older snapshot and the journal
    r = hoard("show", str(store), "cart-42", "--version", "5")
    assert r.code == 1
    assert "cannot be rebuilt" in r.err and "v3, v7 (recovery points)" in r.err
    no_traceback(r)
    assert hoard("show", str(store), "cart-42", "--version", "7", "--json").json()["source"] == "recovery point 2"
    r = hoard("show", str(store), "cart-42", "--version", "12")
    assert r.code == 1 and "no version 12" in r.err


def test_show_of_a_missing_context_fails_cleanly(hoard: Hoard, store: Path) -> None:
    r = hoard("show", str(store), "nope")
    assert r.code == 1 and "'nope'" in r.err
    no_traceback(r)


def test_history_lists_recovery_points_and_the_journal_since_the_last_snapshot(hoard: Hoard, store: Path) -> None:
    h = hoard("history", str(store), "cart-42", "--json").json()
    assert h["version"] == 11 and h["snapshots"] == [1, 9]
    assert [(rp["id"], rp["version"], rp["label"]) for rp in h["recovery_points"]] == [
        (1, 3, "before-edit"), (2, 7, None)]
    assert [(j["version"], j["set"]) for j in h["journal"]] == [(10, ["total"]), (11, ["coupon"])]
    assert h["rebuildable"] == {"from": 1, "to": 11}
    table = hoard("history", str(store), "cart-42")
    assert table.code == 0 and "before-edit" in table.out and "set coupon" in table.out


def test_stats_counts_what_is_stored(hoard: Hoard, store: Path) -> None:
    s = hoard("stats", str(store), "--json").json()
    assert s["contexts"] == 3 and s["versions_total"] == 11 + 1 + 2
    assert s["recovery_points"]["count"] == 2 and s["journal"]["count"] >= 2
    assert s["file_bytes"] > 0 and s["stored_bytes"] > 0
    assert s["stored_bytes"] == sum(s[t]["stored_bytes"] for t in ("snapshots", "journal", "recovery_points"))
    assert s["largest"][0]["id"] == "cart-42"
    assert hoard("stats", str(store)).code == 0


def test_read_only_commands_work_while_a_program_has_the_store_open(hoard: Hoard, store: Path) -> None:
    with open_system(store, adapter_config=NO_DEFAULT) as s:
        s.manager.update("cart-7", {"paid": True})  # committed (durability immediate)
        assert hoard("show", str(store), "cart-7", "--key", "paid", "--json").json()["value"] is True
        assert len(hoard("ls", str(store), "--json").json()) == 3


def test_ids_with_markup_or_unicode_are_printed_verbatim(hoard: Hoard, tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    with open_system(path, adapter_config=NO_DEFAULT) as s:
        s.manager.create("[bold]ünï/cødé[/bold]", {"[k]": "[red]v"})
    assert "[bold]ünï/cødé[/bold]" in hoard("ls", str(path)).out
    shown = hoard("show", str(path), "[bold]ünï/cødé[/bold]")
    assert "[bold]ünï/cødé[/bold]" in shown.out and '"[red]v"' in shown.out


def test_show_prints_long_values_and_metadata_on_one_line(hoard: Hoard, tmp_path: Path) -> None:
    path = tmp_path / "long.db"
    token, note, owner = "abcdefghij" * 20, "the quick brown fox jumps over the lazy dog " * 5, "o" * 200
    with open_system(path, adapter_config=NO_DEFAULT) as s:
        t = s.adapter.create_and_activate("cfg")
        t.update({"token": token, "note": note})
        t.set_metadata("owner", owner)
    assert json.loads(hoard("show", str(path), "cfg", "--key", "token").out) == token
    r = hoard("show", str(path), "cfg", "--key", "note")
    assert r.out.count("\n") == 1 and json.loads(r.out) == note
    (meta,) = [line for line in hoard("show", str(path), "cfg").out.splitlines() if line.startswith("metadata:")]
    assert json.loads(meta.removeprefix("metadata: ")) == {"owner": owner}


def test_ls_refuses_a_date_before_the_first_second_as_a_usage_error(store: Path) -> None:
    """0001-01-01 in local time east of UTC (Tokyo here) is in year 0 in UTC: no timestamp holds it."""
    for args in ([], ["--json"]):
        r = subprocess.run([*HOARD, "ls", str(store), "--updated-since", "0001-01-01", *args],  # noqa: S603
                           env={**command_env(), "TZ": "Asia/Tokyo"}, capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 2 and "0001-01-01" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_times_past_what_a_date_holds_are_printed_as_numbers(hoard: Hoard, tmp_path: Path) -> None:
    """A store another writer gave times in milliseconds (year 58897): shown, not a crash."""
    path, ms = tmp_path / "ms.db", 1.7e12
    store = open_store(path, readonly=False)
    try:
        state = new_state("ms", freeze_mapping({"a": 1}), now=ms)
        store.commit([CreateContext(state), PutRecoveryPoint(RecoveryPoint(1, "ms", 1, "x", ms, state), keep=3)])
    finally:
        store.close()
    for args in (["ls"], ["ls", "--json"], ["show", "ms"], ["show", "ms", "--json"], ["history", "ms"],
                 ["history", "ms", "--json"]):
        r = hoard(args[0], str(path), *args[1:])
        no_traceback(r)
        assert r.code == 0 and "1700000000000" in r.out, (args, r.err)
