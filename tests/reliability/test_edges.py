"""Attacks on the edges (issue 11): disk full, hostile objects, moved or replaced stores, failed commits
in ``deferred`` mode, limits at creation, typed errors, read-only stores, a full WAL.

Every test counts what was acknowledged and checks, after a reopen, that each acknowledged change is
there (0 lost). Disk full is a real, small tmpfs (`_edges.small_disk`; root only, skipped otherwise
except under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hoard import (
    ChangesLost,
    ConfigError,
    ContextAdapterConfig,
    ContextCrashedError,
    ContextManagerConfig,
    ContextStatus,
    ContextTimeoutError,
    CorruptStateError,
    InvalidContextIdError,
    InvalidValueError,
    PersistenceError,
    RecoveryPointNotFoundError,
    SQLiteStore,
    StateChanged,
    StateNotSavedError,
    StoreLockedError,
    SubscriberOverflow,
    VersionConflictError,
    open_system,
)
from tests.helpers import wait_until

from ._edges import SmallDisk, small_disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "mnt", "4m") as d:
        yield d


def _none(**kw: object) -> ContextManagerConfig:
    return ContextManagerConfig(**{"durability": "none", "call_timeout": 10.0, **kw})  # type: ignore[arg-type]


# -- 1. durability="none": a failed final snapshot is never swallowed -------------------------------------
def test_none_mode_deactivate_on_a_full_disk_raises_keeps_the_context_and_a_retry_saves_it(
        disk: SmallDisk, caplog: pytest.LogCaptureFixture) -> None:
    path = disk.path / "state.db"
    system = open_system(path, manager_config=_none())
    try:
        t = system.adapter.activate("x")
        acked = {}
        for i in range(600):
            t.set(f"k{i}", f"value {i} " + "p" * 40)
            acked[f"k{i}"] = f"value {i} " + "p" * 40
        version = t.version
        disk.fill()
        with caplog.at_level(logging.ERROR), pytest.raises(PersistenceError):
            system.adapter.deactivate("x")
        assert "journal is intact" not in caplog.text  # there is no journal in this mode
        assert system.adapter.status("x") is ContextStatus.ACTIVE  # kept, state and all
        assert t.version == version
        assert dict(t.state().data) == acked
        t.set("after", 1)  # still serves writes (in memory, as this mode does)
        acked["after"] = 1
        disk.free()
        assert system.adapter.deactivate("x") is True
    finally:
        disk.free()
        system.stop()
    with open_system(path, manager_config=_none()) as again:
        data = dict(again.manager.get_state("x").data)
        _report("disk full at deactivate (none)", acked, data)
        assert data == acked


def _report(attack: str, acked: dict[str, Any], found: dict[str, Any]) -> None:
    """One line per attack: acknowledged writes and how many of them are not in the store (-s shows it)."""
    lost = sum(1 for k, v in acked.items() if found.get(k, _GONE) != v)
    print(f"\nattack {attack}: acknowledged {len(acked)}, lost {lost}")


_GONE = object()


def test_none_mode_stop_with_discard_unsaved_stops_on_a_full_disk_and_says_what_was_not_saved(
        disk: SmallDisk) -> None:
    system = open_system(disk.path / "state.db", manager_config=_none())
    try:
        system.adapter.activate("x").set("k", 1)
        disk.fill()
        with pytest.raises(StateNotSavedError, match="'x'"):
            system.stop(discard_unsaved=True)
        assert system.stopped
    finally:
        disk.free()
        system.stop()


def test_none_mode_stop_on_a_full_disk_raises_and_a_retried_stop_saves_every_change(disk: SmallDisk) -> None:
    path = disk.path / "state.db"
    system = open_system(path, manager_config=_none(),
                         adapter_config=ContextAdapterConfig(auto_activate_default=False))
    try:
        acked: dict[str, dict[str, int]] = {"a": {}, "b": {}}
        for cid, data in acked.items():
            t = system.adapter.create_and_activate(cid)
            for i in range(300):
                t.set(f"k{i}", i)
                data[f"k{i}"] = i
        disk.fill()
        with pytest.raises(PersistenceError):
            system.stop()
        assert not system.stopped  # nothing was saved: the system keeps serving, stop() may be retried
        assert dict(system.adapter.tracker("a").state().data) == acked["a"]
    finally:
        disk.free()
        system.stop()
    assert system.stopped
    with open_system(path, manager_config=_none()) as again:
        for cid, data in acked.items():
            found = dict(again.manager.get_state(cid).data)
            _report(f"disk full at stop (none), context {cid}", data, found)
            assert found == data


# -- 2. hostile objects are refused, never crash a context; a crash loses nothing acknowledged -----------
class Boom(Exception):
    pass


class EvilInt(int):
    def __int__(self) -> int:
        raise Boom("__int__")

    def __index__(self) -> int:
        raise Boom("__index__")


class EvilFloat(float):
    def __float__(self) -> float:
        raise Boom("__float__")


class EvilStr(str):
    __slots__ = ()

    def __str__(self) -> str:
        raise Boom("__str__")

    def __hash__(self) -> int:
        raise Boom("__hash__")

    def __eq__(self, other: object) -> bool:
        raise Boom("__eq__")

    def __repr__(self) -> str:
        raise Boom("__repr__")


class EvilKey(str):
    """Usable as a dict key (hashes like its text); its other methods raise."""

    __slots__ = ()
    __hash__ = str.__hash__

    def __str__(self) -> str:
        raise Boom("__str__")

    def __repr__(self) -> str:
        raise Boom("__repr__")

    def isascii(self) -> bool:
        raise Boom("isascii")

    def encode(self, *a: Any, **k: Any) -> bytes:
        raise Boom("encode")


class EvilMapping(Mapping[str, object]):
    def __getitem__(self, key: str) -> object:
        raise Boom("__getitem__")

    def __iter__(self) -> Iterator[str]:
        raise Boom("__iter__")

    def __len__(self) -> int:
        return 1

    def items(self) -> Any:
        raise Boom("items")


class EvilDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise Boom("items")

    def __iter__(self) -> Any:
        raise Boom("__iter__")


class EvilList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise Boom("__iter__")


class EvilKeys:
    def __iter__(self) -> Any:
        raise Boom("__iter__")


HOSTILE_VALUES = [EvilInt(1), EvilFloat(1.5), EvilStr("s"), EvilMapping(), EvilList([1]),
                  {"nested": [EvilInt(2)]}, [EvilMapping()], {EvilKey("k"): 1}, {"a": EvilKey("v")}]


def _attacks(t: Any) -> list[tuple[str, Callable[[], object]]]:
    out: list[tuple[str, Callable[[], object]]] = []
    for v in HOSTILE_VALUES:
        name = type(v).__name__
        out += [(f"set value {name}", lambda v=v: t.set("k", v)),
                (f"update value {name}", lambda v=v: t.update({"k": v})),
                (f"metadata value {name}", lambda v=v: t.set_metadata("m", v)),
                (f"transact value {name}", lambda v=v: t.transact(lambda d, v=v: d.__setitem__("k", v)))]
    out += [("set key EvilStr", lambda: t.set(EvilStr("k"), 1)),
            ("update mapping EvilMapping", lambda: t.update(EvilMapping())),
            ("update mapping EvilDict", lambda: t.update(EvilDict(k=1))),
            ("update key EvilKey", lambda: t.update({EvilKey("k"): 1})),
            ("delete key EvilStr", lambda: t.delete([EvilStr("k0")])),
            ("delete keys EvilKeys", lambda: t.delete(EvilKeys())),
            ("metadata key EvilKey", lambda: t.set_metadata(EvilKey("m"), 1)),
            ("metadata key EvilStr", lambda: t.set_metadata({EvilKey("m"): EvilStr("v")})),
            ("metadata remove EvilStr", lambda: t.set_metadata({}, remove=[EvilStr("m")])),
            ("metadata remove EvilKeys", lambda: t.set_metadata({}, remove=EvilKeys())),
            ("transact key EvilKey", lambda: t.transact(lambda d: d.__setitem__(EvilKey("k"), EvilInt(1))))]
    return out


@pytest.mark.parametrize("durability", ["immediate", "deferred", "none"])
def test_hostile_objects_in_every_position_are_refused_and_never_crash_the_context(
        tmp_path: Path, durability: str) -> None:
    cfg = ContextManagerConfig(durability=durability, call_timeout=10.0)  # type: ignore[arg-type]
    path = tmp_path / "state.db"
    with open_system(path, manager_config=cfg) as system:
        t = system.adapter.activate("x")
        for i in range(100):
            t.set(f"k{i}", i)
        before = t.state()
        refused = []
        for what, attack in _attacks(t):
            with pytest.raises(InvalidValueError, match=r"Boom|str") as info:
                attack()
            assert info.value.context_id == "x", what
            refused.append(what)
            assert t.state() == before, what  # nothing changed
            assert system.adapter.status("x") is ContextStatus.ACTIVE, what  # no crash, never FAILED
        assert len(refused) == len(_attacks(t))
        # ids and the initial data of create
        with pytest.raises(InvalidContextIdError):
            system.manager.create(EvilStr("y"))  # type: ignore[arg-type]
        for bad in ({"a": EvilInt(1)}, EvilMapping(), {EvilKey("a"): EvilStr("b")}):
            with pytest.raises(InvalidValueError):
                system.manager.create("y", bad)
            with pytest.raises(InvalidValueError):
                system.manager.create("y", {}, bad)
            with pytest.raises(InvalidValueError):
                system.adapter.create_and_activate("y", bad)
        assert not system.manager.exists("y")
        assert t.version == 101
    with open_system(path, manager_config=cfg) as again:
        _report(f"hostile objects ({durability}, {len(refused)} refused)", dict(before.data),
                dict(again.manager.get_state("x").data))
        assert dict(again.manager.get_state("x").data) == dict(before.data)
        assert again.manager.get_state("x").version == before.version


class FlakyClock:
    """The injected wall clock; raises once when armed (a bug inside the write path)."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self) -> float:
        if self.armed:
            self.armed = False
            raise Boom("clock")
        return time.time()


@pytest.mark.parametrize("durability", ["immediate", "deferred", "none"])
def test_a_crashed_context_comes_back_with_every_acknowledged_change(tmp_path: Path, durability: str) -> None:
    clock = FlakyClock()
    cfg = ContextManagerConfig(durability=durability, call_timeout=10.0, clock=clock)  # type: ignore[arg-type]
    path = tmp_path / "state.db"
    with open_system(path, manager_config=cfg) as system:
        t = system.adapter.activate("x")
        acked = {f"k{i}": i for i in range(100)}
        for k, v in acked.items():
            t.set(k, v)
        assert t.version == 101
        clock.armed = True
        with pytest.raises(ContextCrashedError):
            t.set("crash", 1)
        assert t.version == 101  # restarted: the acknowledged changes are all there, in memory too
        assert dict(t.state().data) == acked
        assert t.set("after", 1) == 102
        acked["after"] = 1
    with open_system(path, manager_config=cfg) as again:
        _report(f"context crash ({durability})", acked, dict(again.manager.get_state("x").data))
        assert dict(again.manager.get_state("x").data) == acked


# -- 6. create / create_and_activate hold the initial state to the limits ---------------------------------
def test_create_refuses_a_state_over_max_state_bytes_and_reserved_metadata(tmp_path: Path) -> None:
    cfg = ContextManagerConfig(max_state_bytes=100_000, max_value_bytes=20_000, call_timeout=10.0)
    path = tmp_path / "state.db"
    big = {f"k{i}": "v" * 10_000 for i in range(20)}  # every value within max_value_bytes, 200 kB in all
    with open_system(path, manager_config=cfg) as system:
        with pytest.raises(InvalidValueError, match="max_state_bytes"):
            system.manager.create("big", big)
        with pytest.raises(InvalidValueError, match="max_state_bytes"):
            system.manager.create("big", {}, big)
        with pytest.raises(InvalidValueError, match="max_state_bytes"):
            system.adapter.create_and_activate("big", big)
        with pytest.raises(InvalidValueError, match="reserved"):
            system.manager.create("meta", {}, {"hoard:schema": "x"})
        with pytest.raises(InvalidValueError, match="reserved"):
            system.adapter.create_and_activate("meta", {}, {"hoard:anything": 1})
        assert system.manager.list_ids() == ["default"]
        small = system.adapter.create_and_activate("ok", {"k": "v"}, {"m": 1})
        assert small.set("k2", "w") == 2  # a context that is created can be written and read back
    with open_system(path, manager_config=cfg) as again:
        assert set(again.manager.list_ids()) == {"default", "ok"}
        assert dict(again.manager.get_state("ok").data) == {"k": "v", "k2": "w"}


# -- 3. one writer per store file, whatever it is called -------------------------------------------------
def _spellings(tmp_path: Path, path: Path) -> list[tuple[str, Path]]:
    (tmp_path / "link.db").symlink_to(path)
    os.link(path, tmp_path / "hard.db")
    (tmp_path / "sub").mkdir()
    return [("symlink", tmp_path / "link.db"), ("hard link", tmp_path / "hard.db"),
            ("another spelling", tmp_path / "sub" / ".." / path.name)]


def test_a_second_writer_of_the_same_file_is_refused_by_any_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with open_system(path) as system:
        t = system.adapter.activate("x")
        t.set("k", 1)
        for what, other in _spellings(tmp_path, path):
            with pytest.raises(StoreLockedError):
                open_system(other)
            t.set("k", t.get("k") + 1)  # the refused opener took nothing from the open store
            assert t.get("k") is not None, what
        # another process, through the symlink
        code = ("import sys\nfrom hoard import open_system, StoreLockedError\n"
                "try:\n    open_system(sys.argv[1]).stop()\nexcept StoreLockedError:\n    sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "link.db")], check=False,  # noqa: S603
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, done.stderr
        final = t.set("k", 100)
    with open_system(tmp_path / "link.db") as again:  # free again once the first one stopped
        assert again.manager.get_state("x").version == final


def test_a_second_writer_through_a_bind_mount_of_the_file_is_refused(tmp_path: Path) -> None:
    real, bound = tmp_path / "state.db", tmp_path / "mounted.db"
    with open_system(real) as system:
        system.adapter.activate("x").set("k", 1)
        bound.touch()
        done = subprocess.run(["mount", "--bind", str(real), str(bound)], capture_output=True,  # noqa: S603, S607
                              text=True, check=False)
        if done.returncode != 0:
            reason = f"cannot bind-mount (needs root): {done.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        try:
            with pytest.raises(StoreLockedError):
                open_system(bound)
            assert system.adapter.activate("x").set("k", 2) == 3
        finally:
            subprocess.run(["umount", "-l", str(bound)], check=False, capture_output=True)  # noqa: S603, S607


# -- 4. the store deleted or replaced under a running system: nothing more is acknowledged ------------------
@pytest.mark.parametrize("how", ["directory deleted", "file deleted", "file replaced"])
def test_no_write_is_acknowledged_once_the_store_file_is_gone_or_replaced(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "state.db"
    system = open_system(path, manager_config=ContextManagerConfig(call_timeout=10.0))
    try:
        t = system.adapter.activate("x")
        for i in range(10):
            t.set(f"k{i}", i)
        if how == "directory deleted":
            shutil.rmtree(folder)
        elif how == "file deleted":
            path.unlink()
        else:
            other = tmp_path / "other.db"
            with open_system(other) as o:
                o.adapter.activate("x").set("other", 1)
            os.replace(other, path)
        acknowledged_after = 0
        for i in range(200):
            try:
                t.set(f"after{i}", i)
            except PersistenceError as exc:
                assert "deleted" in str(exc) or "replaced" in str(exc), exc
            else:
                acknowledged_after += 1
        print(f"\nattack store {how}: 200 writes after it, acknowledged {acknowledged_after}")
        assert acknowledged_after == 0
    finally:
        with contextlib.suppress(PersistenceError):
            system.stop()
    if how == "file replaced":
        with open_system(path) as again:  # the file now at the path: none of the refused writes in it
            assert "after0" not in again.manager.get_state("x").data


# -- 5. deferred mode: versions are never reused; lost changes are reported; failing commits refuse writes --
def test_deferred_mode_after_a_failed_commit_never_reuses_a_version_and_refuses_writes_until_commits_succeed(
        disk: SmallDisk) -> None:
    path = disk.path / "state.db"
    cfg = ContextManagerConfig(durability="deferred", flush_interval=0.05, call_timeout=10.0)
    system = open_system(path, manager_config=cfg)
    lost_events: list[ChangesLost] = []
    seen = threading.Event()

    def on_lost(event: Any) -> None:
        lost_events.append(event)
        seen.set()

    try:
        system.subscribe(on_lost, kinds=[ChangesLost])
        t = system.adapter.activate("x")
        t.set("balance", 100)
        system.manager.list_ids()  # a store read: commits what is queued first
        durable_version = t.version
        disk.fill()
        acked = [t.set("balance", 0), t.set("note", "x" * 20_000), t.set("more", "y" * 20_000)]
        assert seen.wait(10), "no ChangesLost event"
        event = lost_events[0]
        assert (event.context_id, event.first, event.last) == ("x", durable_version + 1, max(acked))
        assert event.version > max(acked)
        # a client that read a lost version is refused, not accepted on top of a different history
        with pytest.raises(VersionConflictError):
            t.set("balance", 50, expected_version=max(acked))
        assert t.version > max(acked)
        assert t.get("balance") == 100  # the durable data
        # while commits fail, writes are refused, not acknowledged
        for i in range(20):
            with pytest.raises(PersistenceError):
                t.set("refused", i)
        disk.free()
        after = t.set("balance", 101)  # a commit succeeds again: accepted, durable, above every old version
        assert after > max(acked)
        later = t.set("fast", 1)  # and deferred again
        system.manager.list_ids()  # commits what is queued
    finally:
        disk.free()
        system.stop()
    with open_system(path, manager_config=cfg) as again:
        st = again.manager.get_state("x")
        _report("disk full (deferred), after the failure", {"balance": 101, "fast": 1}, dict(st.data))
        print(f"attack disk full (deferred): lost versions {event.first}-{event.last} reported by ChangesLost; "
              f"writes acknowledged while commits failed: 0 of 20")
        assert st.version == later
        assert dict(st.data) == {"balance": 101, "fast": 1}


# -- 13. after disk full, once space is freed the WAL gives its space back --------------------------------
def test_after_disk_full_the_first_successful_commit_truncates_the_wal(tmp_path: Path) -> None:
    with small_disk(tmp_path / "mnt", "16m") as disk:
        path = disk.path / "state.db"
        wal = Path(f"{path}-wal")
        system = open_system(path, manager_config=ContextManagerConfig(call_timeout=10.0))
        try:
            t = system.adapter.activate("x")
            for i in range(40):
                t.set(f"k{i % 10}", os.urandom(50_000).hex())
            assert wal.stat().st_size > 2 * 2**20  # grown, as a WAL does between checkpoints
            disk.fill()
            with pytest.raises(PersistenceError):
                for i in range(100):
                    t.set(f"k{i % 10}", os.urandom(50_000).hex())
            disk.free()
            t.set("k0", "small")
            assert wal.stat().st_size < 2**20  # checkpointed and truncated: the space is free again
            acked = {}
            for i in range(100):
                acked[f"k{i % 10}"] = os.urandom(5_000).hex()
                t.set(f"k{i % 10}", acked[f"k{i % 10}"])
            expected = {**dict(t.state().data), **acked}
        finally:
            system.stop()
        with open_system(path) as again:
            _report("disk full then freed (WAL)", expected, dict(again.manager.get_state("x").data))
            assert dict(again.manager.get_state("x").data) == expected


# -- 12. a store that can be read but not written ----------------------------------------------------------
def test_a_store_on_a_read_only_filesystem_is_refused_for_writing_at_open_and_read_by_readers(
        tmp_path: Path) -> None:
    with small_disk(tmp_path / "mnt", "4m") as disk:
        path = disk.path / "state.db"
        with open_system(path) as system:
            final = system.adapter.activate("x").set("key", 12345)
        done = subprocess.run(["mount", "-o", "remount,ro", str(disk.path)], capture_output=True,  # noqa: S603, S607
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
        with pytest.raises(PersistenceError, match="read-only"):
            open_system(path)
        reader = SQLiteStore(path, readonly=True)
        reader.open()
        try:
            st = reader.load("x")
            assert st is not None and (st.version, dict(st.data)) == (final, {"key": 12345})
        finally:
            reader.close()
        cli = subprocess.run([sys.executable, "-m", "hoard.cli", "show", str(path), "x"],  # noqa: S603
                             capture_output=True, text=True, check=False, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert f"v{final}" in cli.stdout and "12345" in cli.stdout



# -- 11. typed errors with true messages ----------------------------------------------------------------------
def test_bad_arguments_and_failures_raise_the_right_hoard_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        open_system(str(tmp_path / "a\x00b.db"))
    with open_system(tmp_path / "state.db", manager_config=ContextManagerConfig(call_timeout=5.0)) as system:
        t = system.adapter.activate("x")
        t.set("k", 1)
        for bad in ("1", -1, float("nan"), float("inf"), True, [1]):
            with pytest.raises(ConfigError, match="timeout"):
                t.set("k", 2, timeout=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="timeout"):
                system.adapter.activate("x", timeout=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="timeout"):
                system.manager.get_state("x", timeout=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="timeout"):
                t.wait_for_version(5, timeout=bad)  # type: ignore[arg-type]
        for rp in (2**70, -(2**70), 0, -1):
            with pytest.raises(RecoveryPointNotFoundError):
                t.restore(rp)
            with pytest.raises(RecoveryPointNotFoundError):
                t.delete_recovery_point(rp)
        assert t.version == 2

        def inner_timeout(draft: Any) -> None:
            raise ContextTimeoutError("the caller's own wait", 2.0, "elsewhere")

        with pytest.raises(ContextTimeoutError) as info:
            t.transact(inner_timeout, timeout=5.0)
        # not relabelled: the raiser's words and figures, not this call's 5.0 s
        assert str(info.value).startswith("the caller's own wait did not complete within 2.0 s")
        assert "5.0" not in str(info.value)
        assert info.value.context_id == "elsewhere"
        assert t.version == 2


class _RaisingIterable:
    def __iter__(self) -> Any:
        raise RuntimeError("the iterable's own bug")


def test_bad_argument_types_of_waits_futures_metrics_and_subscribe_raise_hoard_errors(tmp_path: Path) -> None:
    # each reached a raw TypeError/ValueError/RuntimeError from deep inside (or, for nan, a
    # misleading "did not complete within nan s"); each now names the argument and the bad value
    with open_system(tmp_path / "state.db", manager_config=ContextManagerConfig(call_timeout=5.0)) as system:
        t = system.adapter.activate("x")
        for bad_version in ("5", None, 2.0, True):
            with pytest.raises(InvalidValueError, match="version") as info:
                t.wait_for_version(bad_version, timeout=1)  # type: ignore[arg-type]
            assert repr(bad_version) in str(info.value)
        for bad in ("1", -1, float("nan"), float("inf"), True, [1]):
            with pytest.raises(ConfigError, match="timeout") as config:
                system.adapter.activate_async("b", timeout=bad)  # type: ignore[arg-type]
            assert repr(bad) in str(config.value)
            pending = t.set_async("k", 1)
            with pytest.raises(ConfigError, match="timeout"):
                pending.get(timeout=bad)  # type: ignore[arg-type]
            assert pending.get(timeout=5) >= 2  # the bad wait changed nothing
        assert system.adapter.activate_async("b", timeout=5).get().get("k") is None
        latency = system.metrics().call_latency
        for bad_q in (2, -0.5, float("nan"), None, "0.5", True):
            with pytest.raises(InvalidValueError, match="q") as quantile:
                latency.quantile(bad_q)  # type: ignore[arg-type]
            assert repr(bad_q) in str(quantile.value)
        assert latency.quantile(0.5) >= 0 and latency.quantile(1) >= 0
        with pytest.raises(InvalidValueError, match="kinds") as kinds:
            system.subscribe(print, kinds=_RaisingIterable())  # type: ignore[arg-type]
        assert "the iterable's own bug" in str(kinds.value)


def test_an_io_error_after_the_filesystem_shut_down_is_not_reported_as_corruption(tmp_path: Path) -> None:
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 * 2**20)
    mounted = all(
        subprocess.run(command, capture_output=True, check=False).returncode == 0  # noqa: S603 - fixed commands
        for command in (["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(mnt)]))
    if not mounted:
        reason = "cannot make and loop-mount an ext4 image (needs root and mkfs.ext4)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        path = mnt / "state.db"
        system = open_system(path, manager_config=ContextManagerConfig(call_timeout=5.0))
        try:
            system.adapter.activate("x", timeout=5.0).set("k", "v" * 1000)
            for i in range(5):
                system.adapter.create_and_activate(f"c{i}", {"a": "b" * 5000})
                system.adapter.deactivate(f"c{i}")
            fd = os.open(mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))  # EXT4_IOC_SHUTDOWN, NOLOGFLUSH
            finally:
                os.close(fd)
            with pytest.raises(PersistenceError, match="I/O error"):
                system.adapter.activate("x").set("k", "w")  # the write fails; SQLite drops its page cache
            errors = []
            for i in range(5):
                try:
                    system.manager.get_state(f"c{i}")
                except PersistenceError as exc:
                    errors.append(exc)
            assert errors
            for exc in errors:
                assert not isinstance(exc, CorruptStateError), exc  # the data was never looked at
                assert "I/O error" in str(exc)
        finally:
            with contextlib.suppress(PersistenceError):
                system.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)  # noqa: S603, S607


# -- 10. a blocked subscriber: bounded backlog, SubscriberOverflow, metrics, stop within its timeout ----------
def test_a_blocked_subscriber_is_dropped_at_its_backlog_limit_and_reported(tmp_path: Path) -> None:
    release = threading.Event()
    overflows: list[SubscriberOverflow] = []
    cfg = ContextManagerConfig(durability="none", subscriber_backlog=200, call_timeout=10.0)
    system = open_system(tmp_path / "state.db", manager_config=cfg)
    try:
        entered = threading.Event()

        def blocked(_event: Any) -> None:
            entered.set()
            release.wait(60)

        stuck = system.subscribe(blocked)
        watcher = system.subscribe(overflows.append, kinds=[SubscriberOverflow])
        t = system.adapter.activate("x")
        t.set("k", 0)
        assert entered.wait(10)
        backlogs = []
        for i in range(2_000):
            t.set("k", i)
            if i == 100:
                backlogs.append(system.metrics().mailbox_depths[f"subscriber:{stuck.id}"])
        wait_until(lambda: len(overflows) == 1, what="the SubscriberOverflow event")
        event = overflows[0]
        assert (event.subscription, event.policy, event.backlog) == (stuck.id, "drop_subscriber", 200)
        assert 50 <= backlogs[0] <= 200  # the backlog shows in the metrics
        depths = system.metrics().mailbox_depths
        assert f"subscriber:{stuck.id}" not in depths  # dropped: nothing of it is kept
        assert depths[f"subscriber:{watcher.id}"] == 0
    finally:
        release.set()
        system.stop()


def test_a_subscriber_with_the_drop_events_policy_keeps_its_subscription(tmp_path: Path) -> None:
    release = threading.Event()
    got: list[int] = []
    system = open_system(tmp_path / "state.db", manager_config=ContextManagerConfig(durability="none"))
    try:
        def slow(event: Any) -> None:
            release.wait(60)
            got.append(event.version)

        sub = system.subscribe(slow, kinds=[StateChanged], max_backlog=10, overflow="drop_events")
        t = system.adapter.activate("x")
        for i in range(500):
            t.set("k", i)
        release.set()
        wait_until(lambda: system.metrics().mailbox_depths[f"subscriber:{sub.id}"] == 0, what="the backlog")
        assert 10 <= len(got) <= 12  # what was queued; the rest was skipped, not queued
        t.set("k", "again")
        wait_until(lambda: got[-1] == t.version, what="the next event")  # still subscribed
    finally:
        release.set()
        system.stop()


def test_stop_returns_within_its_timeout_whatever_subscribers_do(tmp_path: Path) -> None:
    release = threading.Event()
    system = open_system(tmp_path / "state.db", manager_config=ContextManagerConfig(durability="none"))
    stopped = threading.Event()
    try:
        for _ in range(10):
            system.subscribe(lambda _e: release.wait(120))
        t = system.adapter.activate("x")
        for i in range(100):
            t.set("k", i)
        started = time.monotonic()
        stopper = threading.Thread(target=lambda: (system.stop(), stopped.set()))  # timeout: 4 x call_timeout
        stopper.start()
        assert stopped.wait(10), "stop() still blocked by its subscribers after 10 s"
        took = time.monotonic() - started
        stopper.join(10)
        assert system.stopped
        # every actor of the system is gone but the ten subscriber threads blocked in their own code
        alive = [th.name for th in threading.enumerate() if th.is_alive() and th.name.startswith(
            ("EventBusActor-", "SupervisorActor-", "PersistenceActor-", "ContextActor-"))]
        assert alive == []
        print(f"stop with 10 blocked subscribers: {took:.3f} s")
    finally:
        release.set()
        system.stop()


def test_immediate_mode_on_a_full_disk_acknowledges_only_what_is_stored(disk: SmallDisk) -> None:
    path = disk.path / "state.db"
    acked: dict[str, str] = {}
    refused = 0
    system = open_system(path, manager_config=ContextManagerConfig(call_timeout=10.0))
    try:
        t = system.adapter.activate("x")
        disk.fill()
        for i in range(300):  # the disk is full: the WAL may still have room for a few
            value = os.urandom(2_000).hex()
            try:
                t.set(f"k{i}", value)
            except PersistenceError:
                refused += 1
            else:
                acked[f"k{i}"] = value
        assert refused > 0
        disk.free()
        t.set("after", "free")
        acked["after"] = "free"
    finally:
        disk.free()
        system.stop()
    with open_system(path) as again:
        found = dict(again.manager.get_state("x").data)
        _report(f"disk full (immediate, {refused} refused)", acked, found)
        assert found == acked
