"""Who made a change (`by=`, `hoard.acting_as`) and the durable change feed (`system.changes`,
`system.consumer`), on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from hoard import (
    ContextCreated,
    ContextManagerConfig,
    FeedEntry,
    FeedTruncatedError,
    HoardError,
    InvalidValueError,
    StateChanged,
    SystemStoppedError,
    acting_as,
    open_system,
)
from hoard._bridges import change_body
from hoard.actors import Set, Transact, Update
from hoard.storage import CreateContext, DeleteContext, InvalidMessageError, new_state, open_store


def _config(**kw: object) -> ContextManagerConfig:
    return ContextManagerConfig(**kw)  # type: ignore[arg-type]


def check_feed(entries: list[FeedEntry], acknowledged: dict[str, set[int]]) -> None:
    """Offsets 1..n without a gap, each (context, version) exactly once, every acknowledged version
    present, and per context the versions in offset order are 1, 2, 3, ..."""
    offsets = [e.offset for e in entries]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), "a gap or a repeat in the offsets"
    seen = [(e.context_id, e.version) for e in entries]
    assert len(seen) == len(set(seen)), "a change delivered twice"
    per: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        per[e.context_id].append(e.version)
    for cid, versions in per.items():
        assert versions == list(range(versions[0], versions[0] + len(versions))), f"{cid}: out of version order"
    for cid, versions in acknowledged.items():
        assert versions <= set(per[cid]), f"{cid}: acknowledged versions missing from the feed"


# -- by ------------------------------------------------------------------------------------------------
def test_by_is_stored_with_the_change_and_shown_in_events_and_the_feed(target: str | Path | None) -> None:
    with open_system(target) as system:
        events: list[object] = []
        seen = threading.Event()

        def record(e: object) -> None:
            events.append(e)
            if isinstance(e, StateChanged) and e.version == 5:
                seen.set()
        system.subscribe(record, kinds=[StateChanged, ContextCreated])
        system.manager.create("acct", {"n": 0}, by="svc:signup")
        t = system.adapter.activate("acct")
        t.set("n", 1, by="user:ana")
        with acting_as("svc:billing"):
            t.update({"n": 2})
            t.transact(lambda d: d.update(n=3), by="user:bo")  # an explicit by wins
        t.delete("n")  # nobody said
        assert seen.wait(10)
        feed = [(e.version, e.by) for e in system.changes(timeout=0) if e.context_id == "acct"]
        assert feed == [(1, "svc:signup"), (2, "user:ana"), (3, "svc:billing"), (4, "user:bo"), (5, None)]
        created = [e for e in events if isinstance(e, ContextCreated) and e.context_id == "acct"]
        assert [e.by for e in created] == ["svc:signup"]
        changed = [(e.version, e.by) for e in events if isinstance(e, StateChanged) and e.context_id == "acct"]
        assert changed == [(2, "user:ana"), (3, "svc:billing"), (4, "user:bo"), (5, None)]
        if target is not None:
            # stored: the journal of the store itself says who
            entries = system.store.reader()
            if entries is not system.store:
                entries.open()
            try:
                assert [(j.version, j.change.by) for j in entries.journal("acct")] == [
                    (2, "user:ana"), (3, "svc:billing"), (4, "user:bo"), (5, None)]
            finally:
                if entries is not system.store:
                    entries.close()


def test_acting_as_is_per_thread_and_per_asyncio_task(store_path: Path) -> None:
    with open_system(store_path) as system:
        t = system.adapter.activate("c")
        go = threading.Barrier(2)

        def worker(name: str) -> None:
            with acting_as(name):
                go.wait(5)
                for _ in range(20):
                    t.update({name: 1})
        threads = [threading.Thread(target=worker, args=(f"svc:{i}",)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)

        async def tasks() -> None:
            async def one(name: str) -> None:
                with acting_as(name):
                    for _ in range(10):
                        await t.update_async({name: 2})
                        await asyncio.sleep(0)  # let the other task run in between: interleaved
            await asyncio.gather(one("task:a"), one("task:b"))
        asyncio.run(tasks())
        for e in system.changes(timeout=0):
            if e.context_id == "c" and not e.created:
                assert e.by is not None
                assert set(e.changed) == {e.by}, f"v{e.version} written by {e.changed} shows by={e.by}"
        assert sum(1 for e in system.changes(timeout=0) if e.context_id == "c") == 1 + 40 + 20


@pytest.mark.parametrize("bad", ["", "x" * 129, "a\nb", 7, b"user", "\ud800"])
def test_a_bad_by_is_refused_and_nothing_changes(system: object, bad: object) -> None:
    t = system.adapter.activate("c")  # type: ignore[attr-defined]
    t.set("k", 1)
    with pytest.raises(InvalidValueError, match="by"):
        t.set("k", 2, by=bad)
    with pytest.raises(InvalidValueError, match="by"):
        acting_as(bad).__enter__()  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="by"):
        Set("k", 2, by=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="by"):
        system.manager.create("other", by=bad)  # type: ignore[attr-defined]
    assert t.state().version == 2
    assert dict(t.state().data) == {"k": 1}


def test_typed_messages_take_by_from_acting_as_when_built(system: object) -> None:
    t = system.adapter.activate("c")  # type: ignore[attr-defined]
    ref = system.ref("c")  # type: ignore[attr-defined]
    with acting_as("svc:actor"):
        msg = Update({"a": 1})
    assert msg.by == "svc:actor"
    ref.ask(msg)
    ref.ask(Transact(lambda d: d.update(b=2), by="user:x"))
    got = [(e.version, e.by) for e in system.changes(timeout=0) if e.context_id == "c"]  # type: ignore[attr-defined]
    assert got[-2:] == [(t.state().version - 1, "svc:actor"), (t.state().version, "user:x")]


def test_a_context_created_by_activation_records_who_created_it(target: str | Path | None) -> None:
    expected = {"auto": "svc:auto", "implicit": "svc:auto", "given": "user:ana", "later": "svc:auto",
                "explicit": "user:bo"}
    with open_system(target) as system:
        created: dict[str, str | None] = {}
        all_seen = threading.Event()

        def record(e: ContextCreated) -> None:
            created[e.context_id] = e.by
            if expected.keys() <= created.keys():
                all_seen.set()
        system.subscribe(record, kinds=[ContextCreated])
        with acting_as("svc:auto"):
            system.adapter.activate("auto")  # auto_create_contexts: created by this activation
            system.adapter.get_or_create("implicit")
            system.adapter.get_or_create("given", by="user:ana")  # the call's own by wins
            pending = system.adapter.activate_async("later")  # taken in the caller's thread, now
        pending.get(timeout=30)
        system.adapter.create_and_activate("explicit", by="user:bo")
        system.adapter.get_or_create("auto", by="user:late")  # exists: nothing is created
        with pytest.raises(InvalidValueError, match="by"):
            system.adapter.get_or_create("bad", by="x" * 129)
        creations = {e.context_id: e.by for e in system.changes(timeout=0) if e.created}
        assert all_seen.wait(30)
    assert {cid: by for cid, by in creations.items() if cid in expected} == expected
    assert {cid: by for cid, by in created.items() if cid in expected} == expected
    assert "bad" not in creations


# -- deletions -------------------------------------------------------------------------------------------
def test_deleting_a_context_is_a_feed_entry_saying_who_deleted_it_and_the_relay_payload_carries_it(
        target: str | Path | None) -> None:
    with open_system(target) as system:
        system.manager.create("gone", {"k": 0}, by="svc:signup")
        t = system.adapter.activate("gone")
        last = t.set("k", 1, by="user:ana")
        system.manager.delete("gone", by="user:bob")  # active when deleted
        idle = system.adapter.activate("idle")
        idle_last = idle.set("k", 1)
        system.adapter.deactivate("idle")
        with acting_as("svc:janitor"):
            system.manager.delete("idle")  # inactive when deleted: the supervisor reads its version
        with pytest.raises(InvalidValueError, match="by"):
            system.manager.delete("gone", by="x" * 129)
        system.manager.create("gone", by="svc:signup")  # a new life starts over at version 1
        entries = [e for e in system.changes(timeout=0) if e.context_id in ("gone", "idle")]
    shown = [(e.context_id, e.version, e.by, e.created, e.deleted) for e in entries]
    assert shown == [("gone", 1, "svc:signup", True, False), ("gone", last, "user:ana", False, False),
                     ("gone", last + 1, "user:bob", False, True),
                     ("idle", 1, None, True, False), ("idle", idle_last, None, False, False),
                     ("idle", idle_last + 1, "svc:janitor", False, True),
                     ("gone", 1, "svc:signup", True, False)]
    deletion = entries[2]
    assert (deletion.changed, deletion.removed, dict(deletion.values), dict(deletion.metadata), deletion.replaced) \
        == ((), (), {}, {}, True)
    assert deletion.to_dict()["deleted"] is True and entries[1].to_dict()["deleted"] is False
    body = orjson.loads(change_body(deletion))
    assert (body["format"], body["deleted"], body["message_id"], body["by"]) == \
        (1, True, f"gone:{last + 1}@{deletion.offset}", "user:bob")
    assert orjson.loads(change_body(entries[1]))["deleted"] is False


def test_a_deletion_committed_without_its_version_is_a_readable_feed_entry_at_version_0(
        target: str | Path | None) -> None:
    store = open_store(":memory:" if target is None else target, readonly=False)
    try:
        store.commit([CreateContext(new_state("x")), DeleteContext("x", by="tool:cleanup")])
        entries = store.feed(0)
    finally:
        store.close()
    assert [(e.context_id, e.version, e.by, e.created, e.deleted) for e in entries] == [
        ("x", 1, None, True, False), ("x", 0, "tool:cleanup", False, True)]


def test_a_stream_waiting_at_the_head_wakes_for_a_deletion(system: object) -> None:
    t = system.adapter.activate("c")  # type: ignore[attr-defined]
    t.set("k", 1)
    head = list(system.changes(timeout=0))[-1].offset  # type: ignore[attr-defined]
    got: list[FeedEntry] = []
    stream = system.changes(after=head, timeout=30)  # type: ignore[attr-defined]
    reader = threading.Thread(target=lambda: got.append(next(iter(stream))))
    reader.start()
    system.manager.delete("c")  # type: ignore[attr-defined]
    reader.join(30)
    stream.close()
    assert [(e.context_id, e.deleted) for e in got] == [("c", True)]


# -- the feed --------------------------------------------------------------------------------------------
def test_the_feed_under_eight_writer_threads_has_every_change_once_in_commit_order(
        target: str | Path | None) -> None:
    writers, per_writer = 8, 40
    with open_system(target) as system:
        acknowledged: dict[str, set[int]] = defaultdict(set)
        follower_got: list[FeedEntry] = []
        done = threading.Event()

        def follow() -> None:  # a live reader while the writers run
            with system.changes(timeout=None) as stream:
                for e in stream:
                    follower_got.append(e)
                    if done.is_set() and e.offset >= head[0]:
                        return

        head = [0]
        follower = threading.Thread(target=follow)
        follower.start()
        start = threading.Barrier(writers)

        def write(i: int) -> None:
            t = system.adapter.get_or_create(f"w{i}")
            shared = system.adapter.tracker("shared") if i else None
            start.wait(10)
            for n in range(per_writer):
                v = t.set("n", n, by=f"w{i}")
                acknowledged[f"w{i}"].add(v)
                if shared is not None and n % 4 == 0:
                    acknowledged["shared"].add(shared.update({f"w{i}": n}))
        system.adapter.activate("shared")
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        entries = list(system.changes(timeout=0))
        head[0] = entries[-1].offset
        done.set()
        system.manager.create("last-one")  # wakes the follower if it is waiting at the head
        follower.join(30)
        assert not follower.is_alive()
        assert entries[0].offset == 1
        check_feed(entries, acknowledged)
        assert follower_got[:len(entries)] == entries  # the live reader saw exactly the same, in order


def test_the_async_form_reads_the_same_entries(store_path: Path) -> None:
    with open_system(store_path) as system:
        t = system.adapter.activate("c")
        for i in range(30):
            t.set("i", i)

        async def read() -> list[FeedEntry]:
            return [e async for e in system.changes(after=3, timeout=0)]
        assert asyncio.run(read()) == list(system.changes(after=3, timeout=0))


def test_a_stream_left_with_break_goes_on_where_it_stopped_across_store_batches(store_path: Path) -> None:
    """A ``for`` loop over a stream that breaks off leaves the stream where it stopped: the next
    loop (or `next`) goes on with the following entry, also across the batches the stream reads."""
    with open_system(store_path) as system:
        t = system.adapter.activate("c")
        t.update({f"k{i}": i for i in range(3)})
        pykka_futures = [t.set_async("i", i) for i in range(700)]
        for f in pykka_futures:
            f.get(timeout=30)
        stream = system.changes(timeout=0)
        first = []
        for entry in stream:
            first.append(entry.offset)
            if len(first) == 260:
                break
        assert stream.position == first[-1]
        assert next(stream).offset == first[-1] + 1
        rest = [e.offset for e in stream]
        offsets = [*first, first[-1] + 1, *rest]
        assert offsets == [e.offset for e in system.changes(timeout=0)] and len(offsets) > 700
        assert stream.position == offsets[-1]


def test_a_feed_entry_is_immutable_down_to_its_maps(target: str | Path | None) -> None:
    """The maps of an entry refuse changes at every level (its own `values` and `metadata` too,
    empty or not), for every kind of entry: a creation, a change, a metadata change, a deletion."""
    with open_system(target) as system:
        system.manager.create("c", {"a": {"b": [1]}}, metadata={"m": 1})
        t = system.adapter.activate("c")
        t.set("a", {"b": [2]})
        t.set_metadata("m", 2)
        system.manager.delete("c")
        entries = [e for e in system.changes(timeout=0) if e.context_id == "c"]
        assert [(e.created, e.deleted) for e in entries] == [(True, False), (False, False), (False, False),
                                                              (False, True)]
        for entry in entries:
            for mapping in (entry.values, entry.metadata):
                with pytest.raises(TypeError):
                    mapping["x"] = 1  # type: ignore[index]
        with pytest.raises(TypeError):
            entries[1].values["a"]["b"].append(3)


def test_a_consumer_keeps_its_position_in_the_store_across_a_restart(target: str | Path | None) -> None:
    if target is None:
        pytest.skip("a memory store keeps nothing across a restart")
    with open_system(target) as system:
        t = system.adapter.activate("c")
        for i in range(10):
            t.set("i", i)
        billing = system.consumer("billing")
        assert billing.position == 0
        got = []
        for e in billing.changes(timeout=0):
            got.append(e.offset)
            if len(got) == 4:
                billing.commit(e.offset)
                break
        assert billing.position == got[-1]
        with pytest.raises(InvalidValueError, match="never goes back"):
            billing.commit(1)
        with pytest.raises(InvalidValueError, match="newest"):
            billing.commit(10_000)
    with open_system(target) as system:
        billing = system.consumer("billing")
        assert billing.position == got[-1]
        assert next(iter(billing.changes(timeout=0))).offset == got[-1] + 1


def test_retention_keeps_what_a_consumer_has_not_passed_and_truncates_beyond_the_bound(
        target: str | Path | None) -> None:
    cfg = _config(feed_retention=1500)
    with open_system(target, manager_config=cfg) as system:
        t = system.adapter.activate("c")
        slow = system.consumer("slow")
        for i in range(1200):
            t.set("i", i)
        floor, head = system.store.feed_bounds() if target is None else _bounds(system)
        assert floor == 0, "pruned entries a registered consumer had not passed"
        slow.commit(1000)
        for i in range(1100):  # past a prune point (every 1,024 entries)
            t.set("i", i)
        floor, head = system.store.feed_bounds() if target is None else _bounds(system)
        assert floor == 1000  # everything the one consumer passed, nothing it has not
        assert next(iter(slow.changes(timeout=0))).offset == 1001
        for i in range(2000):  # now the consumer falls behind the bound of 1,500 entries
            t.set("i", i)
        floor, head = system.store.feed_bounds() if target is None else _bounds(system)
        assert head - floor <= 1500 + 1024 and floor > 1000
        with pytest.raises(FeedTruncatedError, match="slow") as info:
            list(slow.changes(timeout=0))
        assert info.value.consumer == "slow" and info.value.floor == floor
        with pytest.raises(FeedTruncatedError):
            list(system.changes(after=5, timeout=0))
        slow.remove()
        assert "slow" not in (system.store.consumers() if target is None else _consumers(system))


def _bounds(system: object) -> tuple[int, int]:
    reader = system.store.reader()  # type: ignore[attr-defined]
    reader.open()
    try:
        return reader.feed_bounds()  # type: ignore[no-any-return]
    finally:
        reader.close()


def _consumers(system: object) -> dict[str, int]:
    reader = system.store.reader()  # type: ignore[attr-defined]
    reader.open()
    try:
        return reader.consumers()  # type: ignore[no-any-return]
    finally:
        reader.close()


def test_a_stream_ends_when_the_system_stops(store_path: Path) -> None:
    system = open_system(store_path)
    ended = threading.Event()

    def follow() -> None:
        for _ in system.changes(timeout=None):
            pass
        ended.set()
    th = threading.Thread(target=follow)
    th.start()
    system.adapter.activate("c").set("k", 1)
    system.stop()
    assert ended.wait(10)
    th.join(5)


def test_a_feed_reader_given_back_is_lent_again_from_any_thread_and_closed_with_the_system(store_path: Path) -> None:
    """What a relay's read-ahead thread does: borrow a reader (not one per thread: the thread ends),
    give it back, and the next borrower (another thread) gets the same open reader."""
    system = open_system(store_path)
    readers = system.manager.readers
    try:
        system.adapter.activate("c").set("k", 1)
        head = system.store.feed_bounds()[1]
        first = readers.lend()
        assert first.feed(head - 1, 10)[0].context_id == "c"
        readers.give_back(first)
        lent: list[object] = []
        th = threading.Thread(target=lambda: lent.append(readers.lend()))
        th.start()
        th.join(10)
        assert lent == [first]  # the same reader, not a new one
        second = readers.lend()  # none idle: a new one
        assert second is not first and second.feed_bounds()[1] == head
        readers.give_back(first)
        readers.give_back(second)
    finally:
        system.stop()
    with pytest.raises(SystemStoppedError):
        readers.lend()
    with pytest.raises(HoardError):  # closed with the system
        first.feed_bounds()


@pytest.mark.parametrize("after", [-1, 1.5, "3", None, 2**63, 2**64])
def test_a_bad_offset_is_refused(system: object, after: object) -> None:
    with pytest.raises(InvalidValueError, match="offset"):
        system.changes(after=after)  # type: ignore[attr-defined]
    with pytest.raises(InvalidValueError, match="offset"):
        system.consumer("c").commit(after)  # type: ignore[attr-defined]


def test_without_the_feed_nothing_is_recorded(store_path: Path) -> None:
    with open_system(store_path, manager_config=_config(feed=False)) as system:
        system.adapter.activate("c").set("k", 1)
        assert list(system.changes(timeout=0)) == []
