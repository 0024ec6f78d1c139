"""The forwarder's own request/reply on the real NATS server: answers reach the caller waiting for them
through the forwarder's inbox, a request nobody serves comes back at once as "try here", an answer
that arrives after its caller gave up is dropped, and request ids stay unique across a fork."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hoard import CallNotStartedError, CallOutcomeUnknownError
from hoard._forward import RETRY_HERE, Forwarder, done_reply, with_request_id
from hoard.actors import Reply, Set

Make = Callable[..., Forwarder]


@pytest.fixture
def forwarders(nats_url: str) -> Iterator[Make]:
    """``make(owner_id, serve)``: a forwarder on a fresh schema name; all closed at teardown."""
    made: list[Forwarder] = []
    schema = f"wire_{uuid.uuid4().hex[:12]}"

    def make(owner_id: str, serve: Callable[[dict[str, Any], Callable[..., None]], None]) -> Forwarder:
        forwarder = Forwarder(nats_url, schema=schema, owner_id=owner_id, serve=serve, attempt_timeout=5.0)
        made.append(forwarder)
        return forwarder

    yield make
    for forwarder in made:
        forwarder.close()


def _refuse(_request: dict[str, Any], _done: Callable[..., None]) -> None:
    raise AssertionError("nothing is sent to this forwarder")


def test_a_request_nobody_serves_comes_back_as_try_here_and_leaves_no_waiter(forwarders: Make) -> None:
    caller = forwarders("caller", _refuse)
    result = caller.send("c", {"k": "msg", "id": "c", "m": {}}, "gone", deadline=time.monotonic() + 5.0,
                         what="a set", timeout=5.0)
    assert result is RETRY_HERE  # the NATS server's "no responders": the owner's process is gone
    assert caller._waiting == {}  # noqa: SLF001 - no caller left waiting (the map would only grow)


def test_an_answer_after_its_caller_gave_up_is_dropped_and_later_calls_get_their_own(forwarders: Make) -> None:
    held: list[Callable[..., None]] = []
    arrived = threading.Event()

    def serve(request: dict[str, Any], done: Callable[..., None]) -> None:
        if request["n"] == 0:
            held.append(done)  # answered only after the caller has given up
            arrived.set()
        else:
            done({"ok": {"v": request["n"]}, "lease": 1.0})

    forwarders("owner", serve)
    caller = forwarders("caller", _refuse)
    with pytest.raises(CallOutcomeUnknownError) as unknown:
        caller.send("c", {"k": "msg", "id": "c", "n": 0}, "owner", deadline=time.monotonic() + 0.5, what="a set",
                    timeout=0.5)
    assert unknown.value.context_id == "c"
    assert arrived.wait(5.0)
    held[0]({"ok": {"v": "late"}, "lease": 1.0})
    # the owner sends its answers in order on one connection: the late one reaches the caller first
    for n in (1, 2, 3):
        assert caller.send("c", {"k": "msg", "id": "c", "n": n}, "owner", deadline=time.monotonic() + 5.0,
                           what="a set", timeout=5.0) == n
    assert caller._waiting == {}  # noqa: SLF001 - no caller left waiting (the map would only grow)


@pytest.mark.parametrize("path", ["direct", "buffer", "publish"])
def test_a_publish_that_suspends_is_finished_by_a_task_and_its_answer_arrives(forwarders: Make, path: str) -> None:
    # batches are published without a task (nats-py's buffer takes them without suspending unless it
    # is full, e.g. while reconnecting); one that does suspend is finished by a task, on both sides,
    # whether it went through the client's pending buffer (the socket backed up) or (without those
    # internals) its publish(). On an idle connection a batch goes straight to the socket: the
    # client's flusher (which would suspend here) is not involved at all
    def serve(request: dict[str, Any], done: Callable[..., None]) -> None:
        done({"ok": {"v": request["n"]}, "lease": 1.0})

    owner = forwarders("owner", serve)
    caller = forwarders("caller", _refuse)
    suspended: list[str] = []
    for forwarder in (owner, caller):
        nc = forwarder._nc  # noqa: SLF001 - a client that waits first
        if path in {"direct", "buffer"}:
            assert forwarder._buffer is not None  # noqa: SLF001 - nats-py still has the internals it uses
            if path == "buffer":  # the socket's write buffer holds bytes: batches wait for the flusher
                nc._transport._io_writer.transport.get_write_buffer_size = lambda: 1  # noqa: SLF001
            flush = nc._flush_pending  # noqa: SLF001

            async def slow_flush(*, force_flush: bool = False, _flush: Any = flush,
                                 _name: str = forwarder.owner_id) -> None:
                suspended.append(_name)
                await asyncio.sleep(0)
                await _flush(force_flush=force_flush)

            nc._flush_pending = slow_flush  # noqa: SLF001
        else:
            forwarder._buffer = None  # noqa: SLF001 - as with a nats-py without those internals
            publish = nc.publish

            async def slow_publish(subject: str, payload: bytes = b"", reply: str = "", *, _publish: Any = publish,
                                   _name: str = forwarder.owner_id) -> None:
                suspended.append(_name)
                await asyncio.sleep(0)
                await _publish(subject, payload, reply=reply)

            nc.publish = slow_publish
    for n in (1, 2):
        assert caller.send("c", {"k": "msg", "id": "c", "n": n}, "owner", deadline=time.monotonic() + 5.0,
                           what="a set", timeout=5.0) == n
    assert set(suspended) == (set() if path == "direct" else {"owner", "caller"})
    assert caller._waiting == {}  # noqa: SLF001 - no caller left waiting


def test_served_calls_not_started_by_their_deadlines_are_cancelled_each_in_time(forwarders: Make) -> None:
    # one loop timer watches every served call: a call with a nearer deadline that arrives after one
    # with a farther deadline must still be cancelled by its own, and answered before its caller gives up
    arrived = threading.Event()

    def serve(request: dict[str, Any], done: Any) -> None:
        pending = Reply()
        pending.what, pending.context_id = "a set", request["id"]
        after = done.cancel_unstarted(pending, request["t"])
        pending.add_done_callback(lambda reply: done(done_reply(reply, 1.0), after))
        if request["n"]:
            pending.resolve(request["n"])  # answered at once
        arrived.set()  # (the others: a call that no actor ever starts)

    owner = forwarders("owner", serve)
    caller = forwarders("caller", _refuse)
    far: list[BaseException] = []
    sender = threading.Thread(target=lambda: far.extend(_raised(
        lambda: caller.send("far", {"k": "msg", "id": "far", "n": 0}, "owner", deadline=time.monotonic() + 1.5,
                            what="a set", timeout=1.5))))
    sender.start()
    try:
        assert arrived.wait(5.0)  # the farther deadline is watched first
        with pytest.raises(CallNotStartedError) as near:
            caller.send("near", {"k": "msg", "id": "near", "n": 0}, "owner", deadline=time.monotonic() + 0.3,
                        what="a set", timeout=0.3)
        assert near.value.context_id == "near"
    finally:
        sender.join(10)
    assert [type(exc) for exc in far] == [CallNotStartedError]
    assert caller.send("c", {"k": "msg", "id": "c", "n": 7}, "owner", deadline=time.monotonic() + 5.0,
                       what="a set", timeout=5.0) == 7
    assert owner._unanswered == {}  # noqa: SLF001 - nothing answered stays watched (it would only grow)


def _raised(call: Callable[[], object]) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        return [exc]
    return []


def test_request_ids_are_unique_in_a_forked_child() -> None:
    mine = {with_request_id(Set("k", 1)).request_id for _ in range(3)}
    assert len(mine) == 3
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out at once
        try:
            os.write(write, str(with_request_id(Set("k", 1)).request_id).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 200).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent_next = with_request_id(Set("k", 1)).request_id
    assert child
    assert child != parent_next  # the same counter value, but the child drew a prefix of its own
    assert child.split(".")[0] != parent_next.split(".")[0]
