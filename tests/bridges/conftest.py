"""Fixtures of the broker bridge tests: the real brokers (skipped when one does not answer, failed
under ``CI=true``), a per-test target on a broker, and a check that no bridge thread is left.

Variants marked ``slow`` (50 kills instead of 10) are skipped unless the run selects them with
``-m slow`` (or sets ``HOARD_SLOW=1``), as in tests/reliability."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridges.brokers import Target, broker_problem, make_target
from tests.bridges.kids import Zygote, zygote

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("markexpr", "") or ""
    if "slow" in markexpr or os.environ.get("HOARD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow variant: run with -m slow (or HOARD_SLOW=1)")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


_BRIDGE_THREADS = ("hoard-relay-", "hoard-apply-", "hoard-nats", "paho-mqtt-client-", "test-proxy")


def require_broker(kind: str) -> None:
    problem = broker_problem(kind)
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the {kind} broker: {problem}")
    pytest.skip(f"{problem} (these tests run in CI, where the broker is required)")


def _bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(_BRIDGE_THREADS) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_bridge_threads() -> Iterator[None]:
    before = set(_bridge_threads())
    yield
    deadline = time.monotonic() + 10
    for t in _bridge_threads():
        if t not in before:
            t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in _bridge_threads() if t not in before]
    assert not leaked, f"test left bridge threads running: {leaked}"


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh place to relay into on the broker named by the test's ``kind`` parameter."""
    kind = request.param if hasattr(request, "param") else request.getfixturevalue("kind")
    require_broker(kind)
    t = make_target(kind)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="session")
def session_zygote() -> Iterator[Zygote]:
    """One pre-imported forking parent for the whole run: starting it imports hoard and every broker
    client (1-2 s on a loaded machine), which each kill test would otherwise pay again."""
    with zygote() as z:
        yield z


@pytest.fixture
def kids(session_zygote: Zygote) -> Iterator[Zygote]:
    """The session's zygote, for one test: every child the test forked is killed and reaped after it,
    so no test leaves a process of its own behind."""
    since = len(session_zygote.pids)
    try:
        yield session_zygote
    finally:
        session_zygote.end_children(since)
