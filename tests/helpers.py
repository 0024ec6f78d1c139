"""Test helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hoard.storage import Append, Op, SQLiteStore


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             pause: float = 0.002) -> Any:
    """Poll `condition` until it returns something truthy and return that; fail after `timeout`. The one
    polling helper of the tests: a short Event wait between polls, never a fixed sleep for a result."""
    deadline = time.monotonic() + timeout
    idle = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        idle.wait(pause)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """`wait_for` for a condition (no result)."""
    wait_for(condition, timeout, what)


class RecordingStore(SQLiteStore):
    """A real SQLiteStore that records each commit's batch and can hold commits or run a hook first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[Op]] = []
        self.before_commit: Callable[[Sequence[Op]], None] | None = None
        self.fail_next: BaseException | None = None

    def commit(self, ops: Sequence[Op]) -> None:
        if self.before_commit is not None:
            self.before_commit(ops)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        super().commit(ops)
        self.batches.append(list(ops))

    def appends(self) -> list[int]:
        """Number of journal appends per recorded commit."""
        return [sum(isinstance(op, Append) for op in b) for b in self.batches]


class Clock:
    """An injectable clock: tests move `now` by hand instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_in_threads(n: int, fn: Callable[[int], Any]) -> list[BaseException]:
    """Run ``fn(i)`` for i in range(n) on n threads started together (a barrier); the exceptions
    they raised (asserted by the caller). Every thread is joined (120 s at most each)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(10)
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return errors


@contextlib.contextmanager
def opened_sqlite(path: Path | str, **kw: object) -> Iterator[SQLiteStore]:
    """A `SQLiteStore` at `path` (keyword options `kw`), opened for the `with` block, then closed."""
    store = SQLiteStore(path, **kw)  # type: ignore[arg-type]
    store.open()
    try:
        yield store
    finally:
        store.close()
