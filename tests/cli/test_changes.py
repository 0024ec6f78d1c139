"""``hoard history`` (the stored changes, who made them, values before and after) and ``hoard diff``
(two versions, or a recovery point and a version; --json with an RFC 6902 patch), on a real store."""

from __future__ import annotations

from pathlib import Path

import jsonpatch

from hoard import ContextManagerConfig, open_system
from tests.cli.conftest import NO_DEFAULT, Hoard, no_traceback


def _write(path: Path) -> int:
    with open_system(path, manager_config=ContextManagerConfig(history="all", snapshot_every=5),
                     adapter_config=NO_DEFAULT) as system:
        t = system.adapter.get_or_create("cart")
        t.update({"a": 1, "b": [1, 2]}, by="user:ana")
        t.create_recovery_point()
        for i in range(8):
            t.set("n", i, by="svc:x")
        t.delete("a", by="user:bo")
        return t.set_metadata("owner", "ana")


def test_history_shows_every_kept_change_with_who_and_the_values_before_and_after(tmp_path: Path,
                                                                                  hoard: Hoard) -> None:
    last = _write(tmp_path / "s.db")
    changes = hoard("history", "s.db", "cart", "--json").json()["changes"]
    assert [c["version"] for c in changes] == list(range(2, last + 1))  # history='all': back to the creation
    assert changes[0]["by"] == "user:ana" and changes[0]["after"] == {"a": 1, "b": [1, 2]}
    assert changes[2]["before"] == {"n": 0} and changes[2]["after"] == {"n": 1} and changes[2]["by"] == "svc:x"
    assert changes[-2]["removed"] == ["a"] and changes[-2]["before"] == {"a": 1}
    assert changes[-1]["metadata_changed"] == ["owner"] and changes[-1]["by"] is None
    some = hoard("history", "s.db", "cart", "--since", str(last - 1), "--json").json()["changes"]
    assert [c["version"] for c in some] == [last - 1, last]
    text = hoard("history", "s.db", "cart")
    assert text.code == 0 and "user:bo" in text.out and "-a: 1" in text.out
    no_traceback(text)


def test_diff_between_versions_and_against_a_recovery_point(tmp_path: Path, hoard: Hoard) -> None:
    last = _write(tmp_path / "s.db")
    d = hoard("diff", "s.db", "cart", "rp:1", str(last), "--json").json()
    assert (d["a"], d["b"]) == ("rp:1", str(last))
    assert d["added"] == {"n": 7} and d["removed"] == {"a": 1} and d["metadata_added"] == {"owner": "ana"}
    before = {"data": {"a": 1, "b": [1, 2]}, "metadata": {}}
    assert jsonpatch.apply_patch(before, d["json_patch"]) == {"data": {"b": [1, 2], "n": 7},
                                                             "metadata": {"owner": "ana"}}
    changed = hoard("diff", "s.db", "cart", "3", "9", "--json").json()["changed"]
    assert changed == {"n": {"before": 0, "after": 6}}
    text = hoard("diff", "s.db", "cart", "3", "9")
    assert text.code == 0 and "~ n: 0 -> 6" in text.out
    for bad in (("x", "3"), ("rp:9", "3"), ("0", "3"), (f"rp:{2**64}", "2"), ("2", str(2**63))):
        r = hoard("diff", "s.db", "cart", *bad)
        assert r.code == 2, r
        no_traceback(r)
    r = hoard("diff", "s.db", "nope", "1", "2")
    assert r.code == 1 and "nope" in r.err


def test_history_refuses_a_version_past_what_a_store_can_hold_as_a_usage_error(tmp_path: Path, hoard: Hoard) -> None:
    _write(tmp_path / "s.db")
    for option in ("--since", "--until"):
        r = hoard("history", "s.db", "cart", option, str(2**64))
        assert r.code == 2 and option in r.err, r
        no_traceback(r)


def test_ids_that_look_like_markup_are_printed_as_they_are(tmp_path: Path, hoard: Hoard) -> None:
    path = tmp_path / "m.db"
    ids = ["x[/]", "[red]y", "z\\", "[bold]w[/bold]"]
    with open_system(path, adapter_config=NO_DEFAULT) as s:
        for cid in ids:
            t = s.adapter.create_and_activate(cid)
            t.set("a", 1)
            t.set("b", 2)
            t.create_recovery_point()
    for cid in ids:
        for args in (["diff", str(path), cid, "1", "3"], ["show", str(path), cid], ["history", str(path), cid]):
            r = hoard(*args)
            no_traceback(r)
            assert r.code == 0, (args, r.err)
            assert f"{cid}  v" in r.out or f"{cid}  1 -> 3" in r.out, (args, r.out)
        r = hoard("restore", str(path), cid, "1")
        assert r.code == 0 and repr(cid) in r.out, r.err
    assert all(cid in hoard("stats", str(path)).out for cid in ids)
