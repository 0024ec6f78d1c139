"""Events: order, completeness, isolation of subscribers, lifecycle, wait_for_version."""

from __future__ import annotations

import threading
from pathlib import Path

import pykka
import pytest

from hoard import (
    ConfigError,
    ContextActivated,
    ContextAdapterConfig,
    ContextCreated,
    ContextDeactivated,
    ContextDeleted,
    ContextEvent,
    ContextManagerConfig,
    ContextTimeoutError,
    DeactivationReason,
    InvalidValueError,
    MetadataChanged,
    RecoveryPointCreated,
    RecoveryPointDeleted,
    Restored,
    StateChanged,
    Switched,
    SystemStoppedError,
    open_system,
)
from tests.helpers import wait_until


class Collector:
    """A subscriber that records events and signals when it has `expect` of them."""

    def __init__(self, expect: int) -> None:
        self.events: list[ContextEvent] = []
        self.expect = expect
        self.done = threading.Event()

    def __call__(self, event: ContextEvent) -> None:
        self.events.append(event)
        if len(self.events) >= self.expect:
            self.done.set()


@pytest.mark.parametrize("durability", ["immediate", "deferred", "none"])
def test_state_events_arrive_in_version_order_with_no_gaps(store_path: Path, durability: str) -> None:
    writers, per = 8, 100
    with open_system(store_path, manager_config=ContextManagerConfig(durability=durability)) as s:
        trackers = {c: s.adapter.activate(c) for c in ("a", "b")}
        everything = Collector(2 * writers * per)
        only_a = Collector(writers * per)
        s.subscribe(everything, kinds=[StateChanged])
        s.subscribe(only_a, context_id="a")

        def work(i: int) -> None:
            for j in range(per):
                trackers["a" if i % 2 else "b"].set(f"k{i}", j)
                trackers["b" if i % 2 else "a"].update({f"u{i}": j})

        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert everything.done.wait(30) and only_a.done.wait(30)
        for cid in ("a", "b"):
            versions = [e.version for e in everything.events if e.context_id == cid]
            assert versions == list(range(2, 2 + writers * per))  # exact, ordered, gapless
        assert [e.version for e in only_a.events] == list(range(2, 2 + writers * per))
        assert all(isinstance(e, StateChanged) and e.context_id == "a" for e in only_a.events)
        first = everything.events[0]
        assert len(first.changed) == 1 and first.removed == ()


def test_a_slow_subscriber_never_slows_a_context(system) -> None:
    release = threading.Event()
    got = Collector(51)

    def slow(event: ContextEvent) -> None:
        release.wait(30)
        got(event)

    system.subscribe(slow)
    t = system.adapter.activate("fast")
    for i in range(50):  # all of these complete while the subscriber is stuck on its first event
        t.set("k", i, timeout=2)
    assert t.version == 51
    release.set()
    assert got.done.wait(30)


def test_a_raising_subscriber_is_logged_and_keeps_its_subscription(system, caplog) -> None:
    seen = Collector(3)

    def flaky(event: ContextEvent) -> None:
        seen(event)
        raise RuntimeError("subscriber bug")

    system.subscribe(flaky, kinds=[StateChanged])
    t = system.adapter.activate("c")
    for i in range(3):
        t.set("k", i)
    assert seen.done.wait(10)
    assert [e.version for e in seen.events] == [2, 3, 4]
    assert "subscriber bug" in caplog.text


class Abort(BaseException):
    """A user's own BaseException (not an Exception)."""


@pytest.mark.parametrize("error", [SystemExit(0), Abort("subscriber gave up")], ids=["SystemExit", "custom"])
def test_a_subscriber_raising_a_base_exception_is_logged_keeps_its_subscription_and_stops_no_actor(
        tmp_path: Path, caplog, error: BaseException) -> None:
    # raised in the subscriber's actor, pykka would stop every actor of the process, other systems' too
    with open_system(tmp_path / "one.db") as s1, open_system(tmp_path / "other.db") as s2:
        seen = Collector(3)

        def quits(event: ContextEvent) -> None:
            seen(event)
            raise error

        s1.subscribe(quits, kinds=[StateChanged])
        t = s1.adapter.activate("c")
        for i in range(3):
            t.set("k", i, timeout=5)
        assert seen.done.wait(10)
        assert [e.version for e in seen.events] == [2, 3, 4]
        assert type(error).__name__ in caplog.text
        assert t.set("k", 9, timeout=5) == 5
        assert s2.adapter.activate("d", timeout=5).set("k", 1, timeout=5) == 2


def test_an_actor_ref_subscriber_gets_messages_and_is_dropped_when_dead(system, caplog) -> None:
    got = Collector(2)

    class Listener(pykka.ThreadingActor):
        def on_receive(self, message):
            got(message)

    ref = Listener.start()
    sub = system.subscribe(ref, kinds=[StateChanged])
    t = system.adapter.activate("c")
    t.set("k", 1)
    t.set("k", 2)
    assert got.done.wait(10)
    assert [e.version for e in got.events] == [2, 3]
    ref.stop()
    t.set("k", 3)
    flushed = Collector(1)
    system.subscribe(flushed, kinds=[StateChanged])
    t.set("k", 4)
    assert flushed.done.wait(10)
    assert "dead; dropping" in caplog.text
    sub.cancel()
    sub.cancel()  # idempotent


@pytest.mark.parametrize("bad", ["1", -1, float("nan"), True])
def test_a_cancel_with_a_bad_timeout_is_refused_and_leaves_the_subscription_as_it_was(system, bad: object) -> None:
    seen = Collector(1)
    sub = system.subscribe(seen, kinds=[StateChanged])
    with pytest.raises(ConfigError, match="timeout"):
        sub.cancel(timeout=bad)
    assert not sub.cancelled
    t = system.adapter.activate("c")
    t.set("k", 1)
    assert seen.done.wait(10)  # still subscribed
    sub.cancel()  # and a correct cancel still ends it
    assert sub.cancelled
    t.set("k", 2)
    flushed = Collector(1)
    system.subscribe(flushed, kinds=[StateChanged])
    t.set("k", 3)
    assert flushed.done.wait(10)
    assert [e.version for e in seen.events] == [2]


def test_a_cancel_that_times_out_is_not_marked_cancelled_and_can_be_retried(system) -> None:
    sub = system.subscribe(Collector(1))
    try:
        sub.cancel(timeout=0)  # the bus rarely answers within 0 s
    except ContextTimeoutError:
        assert not sub.cancelled  # its outcome is unknown: a retry sends it again (ending one twice is harmless)
        sub.cancel(timeout=10)
    assert sub.cancelled


def test_lifecycle_events(store_path: Path) -> None:
    cfg = ContextAdapterConfig(max_active_contexts=3)
    with open_system(store_path, adapter_config=cfg) as s:
        log = Collector(10**9)
        s.subscribe(log)
        a = s.adapter
        t = a.activate("x")
        t.set_metadata("m", 1)
        rp = t.create_recovery_point("l")
        t.set("k", 1)
        t.restore(rp.id)
        t.delete_recovery_point(rp.id)
        a.activate("y")
        a.activate("z")  # evicts x (LRU, not current)
        a.deactivate("z")
        s.manager.delete("y")
        a.activate("end")  # its events come after everything above (order holds within one subscriber)
        wait_until(lambda: any(isinstance(e, Switched) and e.context_id == "end" for e in log.events),
                   what="the log subscriber to see the last event")
        kinds = [(type(e).__name__, e.context_id) for e in log.events]
        assert kinds[:6] == [("ContextCreated", "x"), ("ContextActivated", "x"), ("Switched", "x"),
                             ("MetadataChanged", "x"), ("RecoveryPointCreated", "x"), ("StateChanged", "x")]
        restored = next(e for e in log.events if isinstance(e, Restored))
        assert restored.rp_id == rp.id and restored.changed == () and restored.removed == ("k",)
        assert any(isinstance(e, RecoveryPointDeleted) and e.rp_id == rp.id for e in log.events)
        deact = [(e.context_id, e.reason) for e in log.events if isinstance(e, ContextDeactivated)]
        assert ("x", DeactivationReason.EVICTED) in deact and ("z", DeactivationReason.EXPLICIT) in deact
        assert any(isinstance(e, ContextDeleted) and e.context_id == "y" for e in log.events)
        switches = [(e.previous, e.context_id) for e in log.events if isinstance(e, Switched)]
        assert ("y", "z") in switches and ("z", "default") in switches
        assert all(e.at > 0 for e in log.events)
        meta = next(e for e in log.events if isinstance(e, MetadataChanged))
        assert meta.metadata_changed == ("m",) and meta.version == 2
        assert sum(isinstance(e, ContextCreated) for e in log.events) == 4  # x, y, z, end
        assert sum(isinstance(e, ContextActivated) for e in log.events) == 4
        assert any(isinstance(e, RecoveryPointCreated) and e.label == "l" for e in log.events)


def test_shutdown_events_are_delivered_before_stop_returns(store_path: Path) -> None:
    s = open_system(store_path)
    log = Collector(10**9)
    s.subscribe(log, kinds=[ContextDeactivated])
    s.adapter.activate("a")
    s.stop()
    reasons = {(e.context_id, e.reason) for e in log.events}
    assert reasons == {("a", DeactivationReason.SHUTDOWN), ("default", DeactivationReason.SHUTDOWN)}


def test_wait_for_version(system) -> None:
    t = system.adapter.activate("w")
    assert t.wait_for_version(1).version == 1  # already there
    writer = threading.Thread(target=lambda: [t.set("k", i) for i in range(20)])
    writer.start()
    state = t.wait_for_version(15, timeout=10)
    assert state.version >= 15
    writer.join(10)
    with pytest.raises(ContextTimeoutError):
        t.wait_for_version(10**6, timeout=0.05)


def test_a_wait_for_version_under_way_ends_promptly_when_the_system_stops(store_path: Path) -> None:
    s = open_system(store_path)
    t = s.adapter.get_or_create("w")
    out: dict[str, object] = {}

    def waiter() -> None:
        try:
            t.wait_for_version(t.version + 1, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - checked below
            out["error"] = exc

    th = threading.Thread(target=waiter)
    th.start()
    try:
        # nobody else subscribes: the gate opens once the waiter's subscription is in place
        wait_until(lambda: s._gate.active, what="the waiter's subscription")  # noqa: SLF001
    finally:
        s.stop()
    th.join(10)  # it waited its whole 30 s before
    assert not th.is_alive()
    assert isinstance(out.get("error"), SystemStoppedError), out
    with pytest.raises(SystemStoppedError):
        t.wait_for_version(t.version + 1, timeout=30)


def test_bad_subscriptions_are_refused(system) -> None:
    with pytest.raises(InvalidValueError):
        system.subscribe("not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        system.subscribe(print, kinds=[int])  # type: ignore[list-item]
