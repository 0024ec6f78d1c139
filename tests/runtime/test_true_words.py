"""What hoard tells its users is true: the advice of errors for unknown contexts, and the
deactivation reasons events carry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hoard import (
    ContextAdapterConfig,
    ContextDeactivated,
    ContextDeleted,
    ContextEvent,
    ContextNotFoundError,
    ContextSystem,
    DeactivationReason,
    open_system,
)


def _advice_is_true(exc: ContextNotFoundError, context_id: str) -> None:
    message = str(exc)
    assert exc.context_id == context_id and f"context {context_id!r} does not exist" in message
    # auto_create_contexts is on by default: advising to turn it on would be advice to do nothing
    assert "auto_create_contexts=True" not in message
    assert f"adapter.activate({context_id!r})" in message and f"manager.create({context_id!r})" in message


def test_errors_for_an_unknown_context_give_advice_that_works(system: ContextSystem) -> None:
    adapter, manager = system.adapter, system.manager
    with pytest.raises(ContextNotFoundError) as caught:
        adapter.tracker("nope")
    _advice_is_true(caught.value, "nope")
    with pytest.raises(ContextNotFoundError) as caught:
        adapter.deactivate("ghost")
    _advice_is_true(caught.value, "ghost")
    stale = adapter.activate("gone")
    manager.delete("gone")
    with pytest.raises(ContextNotFoundError) as caught:
        stale.set("k", 1)
    _advice_is_true(caught.value, "gone")
    assert adapter.activate("nope").set("k", 1) == 2  # the advice works: activate creates it


def test_activate_with_auto_create_off_names_the_setting(store_path: Path) -> None:
    config = ContextAdapterConfig(auto_create_contexts=False, auto_activate_default=False)
    with open_system(store_path, adapter_config=config) as s, \
            pytest.raises(ContextNotFoundError, match="unless auto_create_contexts is off"):
        s.adapter.activate("nope")


def test_deleting_an_active_context_ends_its_activation_with_reason_deleted(system: ContextSystem) -> None:
    seen: list[ContextEvent] = []
    done = threading.Event()

    def record(event: ContextEvent) -> None:
        seen.append(event)
        if isinstance(event, ContextDeleted) and event.context_id == "idle-one":
            done.set()

    system.subscribe(record, kinds=[ContextDeactivated, ContextDeleted])
    system.adapter.activate("busy").set("k", 1)
    system.manager.create("idle-one")
    system.manager.delete("busy")  # active: its activation ends, then it is deleted
    system.manager.delete("idle-one")  # never active: nothing to deactivate
    assert done.wait(10)
    got = [(type(e).__name__, e.context_id, getattr(e, "reason", None)) for e in seen]
    assert got == [("ContextDeactivated", "busy", DeactivationReason.DELETED),
                   ("ContextDeleted", "busy", "explicit"), ("ContextDeleted", "idle-one", "explicit")]
    assert next(e for e in seen if isinstance(e, ContextDeactivated)).version == 2
