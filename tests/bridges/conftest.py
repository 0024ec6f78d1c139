"""Fixtures of the broker bridge tests: the real brokers (skipped when one does not answer, failed
under ``CI=true``), a per-test target on a broker, and a check that no bridge thread is left."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.bridges.brokers import Target, broker_problem, make_target

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
