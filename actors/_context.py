"""`ContextActor`: the single writer of one context.

Every mutation of a context is a message handled here, one at a time, so no check-then-act window
exists. The actor keeps its *working* state (every change it has accepted) and publishes committed
states to the context's `ContextCell`, where trackers read them without a message:

* ``immediate``: a change is sent to the persistence actor with the caller's reply; that actor
  commits it (group commit), publishes the new state and answers the caller. Readers never see an
  uncommitted change, and the caller reads its own write as soon as its call returns. The actor does
  not wait for the commit: it goes on with the next message (pipelining).
* ``deferred``: the actor publishes and answers at once; the persistence actor commits within
  ``flush_interval``. Writers are held back when the store falls behind: once per
  ``flush_interval`` a change is *marked*, and before marking the next one the actor waits (up to
  `LANDED_WAIT` s) until the mark before the previous one is committed. So what is acknowledged but
  not yet durable stays within about three flush intervals plus the commit under way, however fast
  the writers are (without it, writers that outrun a starved persistence thread grew that window
  without bound), and a store that keeps up never makes a writer wait.
* ``none``: publish and answer at once; the state reaches the store only as a snapshot when the
  context is passivated or the system stops.

If a commit fails, the persistence actor sends `Rollback` with the last durable state, which becomes
both the working and the published state again.

Messages are checked again here (`InvalidMessageError`, `UnknownMessageError`): a malformed message is
the sender's error, answered as such, never a crash. A *told* message that is refused (malformed,
a version conflict, a bad value: there is nobody to answer) is a dead letter: logged, counted and
reported to the supervisor, which emits a `DeadLetter` event; the actor keeps running (pykka would
stop an actor whose told message raised).

User code runs here: transact functions, a bound schema's attrs validators and migrations, and a
written value's own methods (an int subclass's ``__int__``, a mapping's ``items``).
Whatever it raises is the caller's error, the state unchanged, and never leaves `on_receive` raised
when it is a BaseException that is not an Exception (SystemExit, KeyboardInterrupt, a user's own):
pykka's loop would stop every actor of the process, other systems' too. It answers the caller's
reply instead (raised again in the caller's thread); a binding (asked by the supervisor) gets it as
the cause of a `SchemaValidationError`/`SchemaMigrationError`; a told message makes it a dead letter.

A call whose caller timed out before this actor started it is skipped (its reply's start token was
taken by the caller: see `hoard.actors._future`). A write with a `request_id` already in the state's
idempotency record is not applied again: the reply is the version it made then (once that version is
committed).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
from collections.abc import Callable
from time import perf_counter
from typing import Any

import attrs
import immutables
import orjson
import pykka

from hoard.storage import (
    SCHEMA_KEY,
    Change,
    ContextCrashedError,
    ContextState,
    HoardError,
    InvalidValueError,
    Schema,
    SchemaMigrationError,
    SchemaNameMismatchError,
    SchemaValidationError,
    VersionConflictError,
    apply_change,
    encoded_size,
    freeze_mapping,
    freeze_mapping_sized,
    freeze_value,
    freeze_value_sized,
    read_marker,
    thaw,
    validate_key,
)

from ._cell import ContextCell
from ._draft import Draft
from ._events import NO_EVENTS, ChangesLost, Emitter, MetadataChanged, Restored, StateChanged
from ._future import DEFERRED, Letter, Reply
from ._messages import (
    MAX_REQUEST_ID,
    ArmFlush,
    BindSchema,
    Commit,
    CommitsResumed,
    Confirm,
    ContextCrashed,
    CreateRecoveryPoint,
    DeadLetterSeen,
    Delete,
    Flush,
    Get,
    GetMetrics,
    GetState,
    Passivate,
    Rebase,
    Restore,
    Resume,
    Rollback,
    SaveRecoveryPoint,
    SaveSnapshot,
    Set,
    SetMetadata,
    Transact,
    Transacted,
    Update,
)
from ._metrics import Meter, kind_of
from ._settings import ContextSettings

_FLUSH = Flush()
_ARM = ArmFlush()
_FLUSH_LETTER = Letter(_FLUSH, None)  # told, without pykka's tell (see `PersistenceInbox.commit_now`)

#: deferred mode: the longest a context actor waits for its previous marked change to be committed
#: before it goes on (a store that stalls longer fails or times out its commit, which rolls back)
LANDED_WAIT = 2.0

__all__ = ["RESERVED_PREFIX", "ContextActor", "ContextInbox", "Inbox", "PersistenceInbox", "UnknownMessageError",
           "check_reserved"]

RESERVED_PREFIX = "hoard:"  # metadata keys hoard itself writes (the schema marker)

log = logging.getLogger(__name__)


_KINDS: dict[type, str] = {}


def _kind(cls: type) -> str:
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _KINDS[cls] = kind_of(cls)
    return kind


# no write among them
_AFTER_PASSIVATION = frozenset({Get, GetState, GetMetrics, Passivate, Resume, Rollback, CommitsResumed})
_PUBLIC = frozenset({Get, GetState, Set, Update, Delete, SetMetadata, Transact, Restore, CreateRecoveryPoint})
_WRITES = frozenset({Set, Update, Delete, SetMetadata, Transact, Restore})


class UnknownMessageError(HoardError, TypeError):
    """A message of a type this actor does not handle was sent to it."""


_take = queue.SimpleQueue.get


class Inbox(queue.SimpleQueue):  # type: ignore[type-arg]
    """An actor's mailbox (the persistence actor's; `ContextInbox` is a context actor's): a C
    `SimpleQueue`, one C call to put or take a message (a `queue.Queue` spends two Conditions in
    Python on each: 13 of the 17 us a context actor's tell of a `Commit` cost, yappi CPU clock), which
    remembers the envelope being handled so a handler can defer its reply. ``len`` is the number of
    messages waiting (atomic: read by metrics from any thread). pykka's loop needs only `get`, `put`
    and `empty` (tests/actors/test_pykka_hooks.py)."""

    current: Any = None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.current = envelope = _take(self, block, timeout)
        return envelope

    def __len__(self) -> int:
        return self.qsize()


class ContextInbox(Inbox):
    """A context actor's mailbox (an `Inbox`): the supervisor reads the depths of these for metrics."""


class PersistenceInbox(Inbox):
    """The persistence actor's mailbox, with a second lane for the `Commit`s of context actors: `post`
    appends one to `commits` and asks for a wake-up only when none is on its way (one wake-up token,
    taken with ``list.pop``, atomic); the actor's `take` puts the token back, then takes every commit
    posted. So a group commit of n changes is one mailbox message instead of n (each an envelope, a
    liveness check, a wake-up of the persistence thread and a pass through pykka's loop and the
    handler table), and no commit is missed: one posted after a `take` finds the token or one a
    later `take` gives back.

    The wake-up: an ``immediate`` context actor that took the token sends `Flush` (commit now; with
    `commit_now`, which puts it in this mailbox itself); a ``deferred`` one tells `ArmFlush` (the
    persistence actor arms its flush timer: one wake-up per ``flush_interval``, not per change). A
    deferred commit that carries a reply (commits failing: its caller waits for it) tells `Flush`
    whether or not it took the token, so it never waits for the timer. A deferred context's `Rebase`
    goes by the lane too, so that it stays ahead of the context's next commits whichever `take` finds
    them.

    Ordering: a context actor posts its commits and tells its other messages in its own order, and
    every handler of the persistence actor that needs the commits before it (`Flush`, and each
    request that first commits what is pending) takes them first. ``len``/`qsize` count both lanes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.commits: collections.deque[Any] = collections.deque()
        self.wake = [True]  # the token: present while no Flush is on its way
        self.closed = False  # the actor stopped: a commit posted now is never taken

    def post(self, commit: Any) -> bool | None:
        """Queue `commit` (a context actor). True: send the actor `Flush`; False: a Flush is on its
        way and takes this commit too; None: the actor has stopped (nothing will take it)."""
        self.commits.append(commit)
        if self.closed:  # checked after the append: a stopping actor sets it before its last take
            return None
        wake = self.wake
        if not wake:  # the usual case under load, without raising (timeit: 0.57 -> 0.20 us a post);
            return False  # a take that gives the token back after this check takes this commit too
        try:
            wake.pop()
        except IndexError:  # another poster took it meanwhile
            return False
        return True

    def commit_now(self, commit: Any) -> bool:
        """`post` for an ``immediate`` commit, with the `Flush` when this post took the wake-up token,
        put in this mailbox directly: what ``persistence.tell(Flush())`` does, without pykka's
        liveness check, its new envelope and three Python calls on every durable write (liveness is
        the lane's ``closed``: a letter put just after the actor stopped is never read, and the
        commit it was for is failed by the actor's `on_stop`, see `post`). False: the actor has
        stopped (nothing will take the commit; a tell would raise `ActorDeadError`)."""
        posted = self.post(commit)
        if posted:
            self.put(_FLUSH_LETTER)
        return posted is not None

    def take(self) -> list[Any]:
        """Every commit posted so far, oldest first (the persistence actor only)."""
        if not self.wake:
            self.wake.append(True)  # first: a commit posted after the loop below sends a Flush
        commits = self.commits
        return [commits.popleft() for _ in range(len(commits))]

    def qsize(self) -> int:
        return queue.SimpleQueue.qsize(self) + len(self.commits)


def _same_value(old: Any, new: Any) -> bool:
    if type(old) is not type(new):
        return False
    if isinstance(old, (dict, list)):
        return bool(orjson.dumps(old) == orjson.dumps(new))  # 1 == True inside containers; JSON is exact
    return bool(old == new)


class ContextActor(pykka.ThreadingActor):
    """Owns one context. Started and stopped only by the supervisor. See the module docstring."""

    use_daemon_thread = True  # a forgotten stop() must not hang interpreter exit; atexit stops systems

    @staticmethod
    def _create_actor_inbox() -> Any:
        return ContextInbox()

    @staticmethod
    def _create_future() -> Reply:
        return Reply()

    def __init__(self, cell: ContextCell, persistence: pykka.ActorRef[Any], settings: ContextSettings,
                 supervisor: pykka.ActorRef[Any] | None = None, events: Emitter = NO_EVENTS) -> None:
        super().__init__()
        self._inbox: ContextInbox = self.actor_inbox  # type: ignore[assignment]
        self.supervisor = supervisor
        self.events = events
        self.cell = cell
        self.working: ContextState = cell.state
        self.persistence = persistence
        self.settings = settings
        self._immediate = settings.durability == "immediate"
        self._deferred = settings.durability == "deferred"
        # immediate and deferred mode: commits go by the persistence actor's commit lane (see
        # PersistenceInbox); None: told one by one (a persistence actor without the lane)
        lane = getattr(persistence, "actor_inbox", None)
        self._post = lane.post if (self._immediate or self._deferred) and isinstance(lane, PersistenceInbox) else None
        self._commit_now: Callable[[Any], bool] | None = (
            lane.commit_now if self._immediate and isinstance(lane, PersistenceInbox) else None)
        self._gate = events.gate  # `events.active` without the property call (read on every write)
        self._clock = settings.clock
        self._current_reply: Reply | None = None  # the reply of the message being handled (see on_receive)
        # deferred mode: the highest version answered before its commit, and whether commits are
        # failing (then every write waits for its commit, as in immediate mode, until one succeeds)
        self._acked = cell.state.version
        self._degraded = False
        # deferred mode: the `Commit.landed` of the two last marked changes (older first), and when
        # the next mark is due
        self._landed: tuple[Reply | None, Reply | None] = (None, None)
        self._mark_due = 0.0
        # An upper bound of the JSON size of data + metadata: None until the first write measures it
        # exactly (an O(n) encode, kept off the activation path); then each change adds what it sets,
        # and only a bound that crosses max_state_bytes is measured exactly again.
        self._size: int | None = None
        self._binding = False
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Set: self._on_set,
            Update: self._on_update,
            Delete: self._on_delete,
            SetMetadata: self._on_set_metadata,
            Transact: self._on_transact,
            Restore: self._on_restore,
            Get: self._on_get,
            GetState: lambda _m: self.working,
            CreateRecoveryPoint: self._on_create_recovery_point,
            Passivate: self._on_passivate,
            Rollback: self._on_rollback,
            Resume: self._on_resume,
            CommitsResumed: self._on_commits_resumed,
            BindSchema: self._on_bind_schema,
            GetMetrics: self._on_get_metrics,
        }
        # read by metrics() from other threads without a message (see hoard.actors._metrics)
        self.meter = cell.meter = Meter()
        self._calls = self.meter.calls
        self._call_counts = self._calls.counts  # written here only (see hoard.actors._metrics)
        self._latency = self.meter.latency
        self._oldest_request: float | None = None  # `at` of the oldest remembered request id (None: unknown)
        self._t0 = 0.0
        self._passivated = False
        self.schema: Schema | None = None
        self._unknown_schema: str | None = None  # bound to a schema this system does not know
        try:
            marker = read_marker(cell.state.metadata, cell.id)
        except HoardError:
            marker = ("(unreadable marker)", 0)
        if marker is not None:
            self._unknown_schema = marker[0]  # writes are refused until the supervisor binds it

    def on_stop(self) -> None:
        """Passivated, deleted, crashed or shut down: the trackers holding the cell let go of it (so a
        tracker of a passivated context keeps none of its state; its next call re-activates)."""
        self.cell.release_holders()

    def on_receive(self, message: Any) -> Any:
        envelope = self._inbox.current
        reply = envelope.reply_to if envelope is not None else None
        if reply is not None:
            if type(reply) is Reply:
                try:
                    reply._token.pop()  # noqa: SLF001 - `Reply.start` inline: this runs for every call
                except IndexError:
                    return DEFERRED  # its caller gave up before it started: cancelled, never run (no reply due)
                self._current_reply = reply
            elif isinstance(reply, Reply):  # a subclass
                if not reply.start():
                    return DEFERRED
                self._current_reply = reply
            else:  # a pykka future: answered by pykka's loop, never deferred
                self._current_reply = None
            return self._receive(message)
        self._current_reply = None
        try:
            return self._receive(message)
        except pykka.ActorDeadError as exc:  # told after the final snapshot: it cannot be applied here
            self._dead_letter(message, exc, undeliverable=True)
            return None
        except Exception as exc:  # noqa: BLE001 - a told message: nobody to answer, and it must not stop us
            self._dead_letter(message, exc)
            return None

    def _dead_letter(self, message: Any, exc: BaseException, *, undeliverable: bool = False) -> None:
        log.warning("context %r: dead letter: a told %s was %s: %s", self.cell.id, type(message).__name__,
                    "too late (passivated)" if undeliverable else "refused", exc)
        if self.supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.supervisor.tell(DeadLetterSeen(self.cell.id, type(message).__name__, repr(exc), undeliverable))

    def _receive(self, message: Any) -> Any:  # noqa: PLR0912 - the call path, read top to bottom (checks inline)
        cls = type(message)
        handler = self._handlers.get(cls)
        if handler is None:
            raise UnknownMessageError(f"context actor {self.cell.id!r} does not handle {cls.__name__}; send one "
                                      "of the messages of hoard.actors")
        if cls in _PUBLIC:
            # InvalidMessageError: built around its checks (evolve, setattr). The plain set (str key, no
            # by; no request id, or one a forwarded set carries) is checked inline: what its validators
            # would check (`_is_request_id`), at no call each
            if cls is Set:
                rid = message.request_id
                if not (type(message.key) is str and message.by is None
                        and (message.expected_version is None or type(message.expected_version) is int)
                        and (rid is None or (type(rid) is str and 0 < len(rid) <= MAX_REQUEST_ID
                                             and rid.isprintable()))):
                    _validate(message)
            else:
                _validate(message)
                rid = message.request_id if cls in _WRITES else None
            if rid is not None:
                done = self.working.requests.get(rid)
                if done is not None:
                    counts = self._call_counts
                    counts["duplicate"] = counts.get("duplicate", 0) + 1
                    return self._duplicate(message, done[0])
        if self._passivated and type(message) not in _AFTER_PASSIVATION:
            # a call that reached the mailbox just before passivation: after the final snapshot (and,
            # on a shared store, the lease release) nothing more may be written here. It is refused
            # as if the actor had already stopped, so its tracker re-activates and retries it.
            raise pykka.ActorDeadError(f"context {self.cell.id!r} was passivated before this call")
        self._t0 = started = perf_counter()
        if cls is not GetMetrics:  # asking for the numbers is not a call to count
            kind = _KINDS.get(cls) or _kind(cls)
            counts = self._call_counts  # Counters.inc inline (every call)
            counts[kind] = counts.get(kind, 0) + 1
        before = self.working
        try:
            result = handler(message)
        except VersionConflictError:
            self.meter.conflicts += 1
            raise
        except HoardError:
            raise  # bad input, conflicts, limits: the caller's error; the state is unchanged
        except _UserError as exc:
            # user code raised (a transact fn, a schema's validator): the caller's own exception,
            # nothing changed
            if isinstance(exc.error, Exception):
                raise exc.error from None
            return self._user_error(message, exc.error)
        except Exception as exc:
            # a bug in the write path: this actor's working state can no longer be trusted. Stop at
            # once (queued calls are failed with ActorDeadError, so their trackers retry them on the
            # restarted actor) and let the supervisor restart the context from its durable state.
            log.exception("context %r crashed handling %s", self.cell.id, type(message).__name__)
            self._crash(exc)
            raise ContextCrashedError(self.cell.id, exc) from exc
        except BaseException as exc:
            # not an Exception (SystemExit, a user's own): user code all the same, never ours (no signal
            # reaches an actor's thread): a value's own __int__ or __iter__, checked before anything
            # changes, so the caller's error. After a change, the state is not to be trusted: a crash.
            if self.working is before:
                return self._user_error(message, exc)
            log.error("context %r crashed handling %s: %r", self.cell.id, type(message).__name__, exc)
            self._crash(exc)
            raise ContextCrashedError(self.cell.id, exc) from exc
        if result is not DEFERRED:  # a deferred reply's latency is recorded when it is answered
            self._latency.observe(perf_counter() - started)
        return result

    def _user_error(self, message: Any, error: BaseException) -> Any:
        """Hand `error`, a BaseException that is not an Exception (SystemExit, KeyboardInterrupt, a
        user's own) raised by user code, to whoever sent `message`, without raising it here: pykka's
        actor loop answers a BaseException by stopping every actor of the process, other systems'
        too. The caller's thread raises it (a SystemExit from a transact fn ends the caller's
        program, as if fn had run there); a told message has nobody to answer and is a dead letter."""
        reply = self._current_reply
        if reply is not None:
            reply.fail(error)
            return DEFERRED  # answered already (pykka's `set(DEFERRED)` is a no-op on a Reply)
        envelope = self._inbox.current
        future = envelope.reply_to if envelope is not None else None
        if future is not None:  # a plain pykka future (an envelope made by hand): answer it, then keep
            future.set_exception((type(error), error, error.__traceback__))  # pykka's loop from answering
            envelope.reply_to = None  # again (its second answer would raise queue.Full out of the loop)
            return None
        self._dead_letter(message, error)
        return None

    def _on_get_metrics(self, _m: GetMetrics) -> dict[str, Any]:
        return self.meter.part()

    def _duplicate(self, message: Any, version: int) -> Any:
        """The reply to a write whose request id was applied at `version`: that version (a
        `Transacted` for ``transact(..., with_version=True)``, None for a plain transact), once
        committed: in ``immediate`` mode an uncommitted one is confirmed by the persistence actor."""
        result: Any = version
        if type(message) is Transact:
            result = Transacted(None, version, duplicate=True) if message.with_version else None
        if self._immediate and version > self.cell.state.version:
            self.persistence.tell(Confirm(self.cell.id, version, result, self._reply()))
            return DEFERRED
        return result

    def _forget(self, now: float) -> tuple[str, ...]:
        """The request ids to drop from the record with the next change (which adds one): those beyond
        the newest `request_window` and those older than `request_ttl`. Trims in batches (an eighth of
        the window), so the sort is paid once per many writes."""
        reqs = self.working.requests
        n = len(reqs)
        window, ttl = self.settings.request_window, self.settings.request_ttl
        expired = ttl is not None and n > 0 and (self._oldest_request is None or now - self._oldest_request > ttl)
        if n < window + max(1, window // 8) and not expired:
            return ()
        entries = sorted(reqs.items(), key=lambda kv: kv[1][0])  # oldest version first
        cut = max(0, n + 1 - window)
        if ttl is not None:
            while cut < n and now - entries[cut][1][1] > ttl:
                cut += 1
        self._oldest_request = entries[cut][1][1] if cut < n else now
        return tuple(k for k, _ in entries[:cut])

    def _crash(self, exc: BaseException) -> None:
        self.cell.closed = True
        self._stop()  # pykka: stop now, without handling the rest of the mailbox
        if self.supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.supervisor.tell(ContextCrashed(self.cell, repr(exc)))

    # -- the write path ------------------------------------------------------------------------------
    def _reply(self) -> Reply | None:
        return self._current_reply

    def _check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self.working.version:
            raise VersionConflictError(self.cell.id, expected, self.working.version)

    def _apply(  # noqa: PLR0912, PLR0915 - the one write path, read top to bottom: checks, size, schema, reply
            self, change_args: dict[str, Any], growth: int, result: Any = None, replace: bool = False,
            rp_id: int | None = None, *, request_id: str | None = None, by: str | None = None) -> Any:
        """Make a change of the working state; hand it to persistence and/or publish it.

        `growth` bounds the bytes the change adds (deletions count as 0; a replace passes its exact
        new size). Returns the reply: `result` (the new version when None), or DEFERRED when the
        persistence actor answers after the commit.
        """
        w = self.working
        if self._unknown_schema is not None and not self._binding:
            raise SchemaNameMismatchError(self._unknown_schema, None, context_id=self.cell.id)
        now = self._clock()
        sets: Any = change_args.get("data_set")
        change: Change | None = None
        forget: tuple[str, ...] = ()
        if not replace and len(change_args) == 1 and sets is not None and len(sets) == 1:
            # one key set (tracker.set, a forwarded one with its request id): the state `apply_change`
            # would build, made directly; the journal entry is built below only if something takes it
            # (a commit, an event). Pinned against apply_change by tests/actors/test_call_path.py
            (k, v), = sets.items()
            requests = w.requests
            if request_id is not None:
                forget = self._forget(now)
                if forget:
                    mm = requests.mutate()
                    for rid in forget:
                        mm.pop(rid, None)
                    mm[request_id] = (w.version + 1, now)
                    requests = mm.finish()
                else:
                    requests = requests.set(request_id, (w.version + 1, now))
            new = ContextState(w.id, w.version + 1, w.data.set(k, v), w.metadata, w.created_at, now, requests)
        else:
            if request_id is not None:
                change_args["request_id"] = request_id
                change_args["forget"] = self._forget(now)
            change = Change(w.version + 1, now, replace=replace, by=by, **change_args)
            new = apply_change(w, change)
        limit = self.settings.max_state_bytes
        if replace:
            size = growth
        else:
            if self._size is None:
                self._size = _state_size(w)
            size = self._size + growth
            if size > limit:
                size = _state_size(new)  # the bound is pessimistic: measure before refusing
        if size > limit:
            raise InvalidValueError(None, f"the state would be {size} bytes, over max_state_bytes={limit}",
                                    context_id=self.cell.id)
        if self.schema is not None and (replace or sets or change_args.get("data_del")):
            try:
                self.schema.validate(new.data, self.cell.id)  # SchemaValidationError: nothing changes
            except Exception:
                raise
            except BaseException as exc:  # an attrs validator (user code): see _user_error
                raise _UserError(exc) from exc
        if result is None:
            result = new.version
        elif result is _NONE:
            result = None
        self.working, self._size = new, size
        emit = self._gate.active
        if change is None:
            if not (emit or self._immediate or self._degraded or self._deferred):
                self.cell.state = new  # durability none, nobody subscribed: no journal entry is taken
                return result
            change = Change(new.version, now, sets, request_id=request_id, forget=forget, by=by)
        event = _state_event(w, change, new, rp_id) if emit else None
        if self._immediate or self._degraded:
            # the persistence actor publishes after the commit, emits, and answers the caller
            commit = Commit(self.cell, change, new, self._current_reply, result, True, event, self._t0)
            commit_now = self._commit_now
            if commit_now is not None:  # immediate, by the lane
                if not commit_now(commit):  # posted, with the Flush when it took the token
                    raise pykka.ActorDeadError("the persistence actor has stopped")  # as a tell to it would
                return DEFERRED
            if self._post is None:
                self.persistence.tell(commit)
                return DEFERRED
            if self._post(commit) is None:
                raise pykka.ActorDeadError("the persistence actor has stopped")  # as a tell to it would
            self.persistence.tell(_FLUSH)  # degraded deferred: never waits for the flush timer (see PersistenceInbox)
            return DEFERRED
        self.cell.state = new
        if event is not None:
            self.events.emit(event)
        if self._deferred:
            self._send_deferred(change, new, result)
        return result

    def _send_deferred(self, change: Change, new: ContextState, result: Any) -> None:
        """Deferred mode: hand `change` to persistence, answered already. Once per flush interval it
        is marked, after waiting until the mark two back is committed or refused (at most
        `LANDED_WAIT` s; see the module docstring): this blocks the actor, and so this context's
        callers, only while the store is more than two flush intervals behind."""
        landed = None
        now = perf_counter()
        if now >= self._mark_due:
            landed = self._mark(now)
        commit = Commit(self.cell, change, new, None, result, False, landed=landed)
        if self._post is None:
            self.persistence.tell(commit)
        else:
            posted = self._post(commit)
            if posted:
                self.persistence.tell(_ARM)  # the first since a take: the persistence actor arms its timer
            elif posted is None:
                raise pykka.ActorDeadError("the persistence actor has stopped")  # as a tell to it would
        self._acked = new.version

    def _mark(self, now: float) -> Reply:
        # the mark two back: sent at least two flush intervals ago, so a store that keeps up (each
        # flush committed within an interval) has landed it and nobody waits; the one just before may
        # still be in the commit under way
        previous, last = self._landed
        if previous is not None and not previous.done:
            try:
                previous.outcome(LANDED_WAIT)
            except pykka.Timeout:
                log.warning("context %r: the store is over %.1f s behind this context's deferred writes; "
                            "going on without waiting longer", self.cell.id, LANDED_WAIT)
            now = perf_counter()
        self._mark_due = now + self.settings.flush_interval
        landed = Reply()
        self._landed = (last, landed)
        return landed

    def _frozen(self, key: str, value: Any) -> tuple[Any, int]:
        """The frozen value and its size as a new entry (key, quotes, colon, comma included)."""
        v, size = freeze_value_sized(key, value, self.cell.id)
        limit = self.settings.max_value_bytes
        if size > limit:
            raise InvalidValueError(key, f"{size} bytes encoded, over max_value_bytes={limit}", context_id=self.cell.id)
        return v, size + encoded_size(key) + 2

    def _frozen_mapping(self, values: Any) -> tuple[dict[str, Any], int]:
        """The frozen mapping and its growth bound: one C-speed encode of the whole mapping (its exact
        JSON size); values are measured one by one only when that total is over max_value_bytes."""
        sets, total = freeze_mapping_sized(values, self.cell.id)
        limit = self.settings.max_value_bytes
        if total > limit:
            for k, v in sets.items():
                size = encoded_size(v)
                if size > limit:
                    raise InvalidValueError(k, f"{size} bytes encoded, over max_value_bytes={limit}",
                                            context_id=self.cell.id)
        return sets, total

    def _on_set(self, m: Set) -> Any:
        expected = m.expected_version
        if expected is not None and expected != self.working.version:  # _check_version inline
            raise VersionConflictError(self.cell.id, expected, self.working.version)
        key = validate_key(m.key, self.cell.id)
        value, growth = self._frozen(key, m.value)
        return self._apply({"data_set": {key: value}}, growth, request_id=m.request_id, by=m.by)

    def _on_update(self, m: Update) -> Any:
        self._check_version(m.expected_version)
        sets, growth = self._frozen_mapping(m.values)
        return self._apply({"data_set": sets}, growth, request_id=m.request_id, by=m.by)

    def _on_delete(self, m: Delete) -> Any:
        self._check_version(m.expected_version)
        keys = tuple(dict.fromkeys(validate_key(k, self.cell.id) for k in m.keys))
        present = tuple(k for k in keys if k in self.working.data)
        return self._apply({"data_del": present}, 0, request_id=m.request_id, by=m.by)

    def _on_set_metadata(self, m: SetMetadata) -> Any:
        self._check_version(m.expected_version)
        sets, growth = self._frozen_mapping(m.values)
        # validate first: `in` hashes the key, and a str subclass's own __hash__ is user code
        dels = tuple(k for k in (validate_key(k, self.cell.id) for k in m.remove) if k in self.working.metadata)
        check_reserved([*sets, *dels], self.cell.id)
        return self._apply({"meta_set": sets, "meta_del": dels}, growth, request_id=m.request_id, by=m.by)

    def _on_transact(self, m: Transact) -> Any:
        self._check_version(m.expected_version)
        w = self.working
        draft = Draft(w.id, w.version, w.data, w.metadata)
        try:
            result = m.fn(draft)  # raises -> nothing changed, the caller gets the exception
        except BaseException as exc:  # SystemExit too: the caller's, never pykka's (see _user_error)
            raise _UserError(exc) from exc
        writes, dels, meta = draft.finish()
        sets = {}
        growth = 0
        for k, v in writes.items():
            key = validate_key(k, self.cell.id)
            fv, size = self._frozen(key, v)
            old = w.data.get(key, _MISSING)
            if old is _MISSING or not _same_value(old, fv):
                sets[key] = fv
                growth += size
        meta_frozen, _ = self._frozen_mapping(meta)
        meta_set = {k: v for k, v in meta_frozen.items()
                    if k not in w.metadata or not _same_value(w.metadata[k], v)}
        meta_del = tuple(k for k in w.metadata if k not in meta_frozen)
        check_reserved([*meta_set, *meta_del], self.cell.id)
        growth += sum(encoded_size(v) + encoded_size(k) + 2 for k, v in meta_set.items())
        if m.with_version:
            result = Transacted(result, w.version + 1)
        return self._apply({"data_set": sets, "data_del": dels, "meta_set": meta_set, "meta_del": meta_del},
                           growth, result=_NONE if result is None else result, request_id=m.request_id, by=m.by)

    def _on_restore(self, m: Restore) -> Any:
        self._check_version(m.expected_version)
        if m.rp.context_id != self.cell.id:
            raise InvalidValueError(None, f"recovery point {m.rp.id} belongs to {m.rp.context_id!r}",
                                    context_id=self.cell.id)
        st = m.rp.state
        return self._apply({"data_set": dict(st.data), "meta_set": dict(st.metadata)},
                           _state_size(st), replace=True, rp_id=m.rp.id, request_id=m.request_id, by=m.by)

    # -- reads and the rest --------------------------------------------------------------------------
    def _on_get(self, m: Get) -> Any:
        return self.working.data.get(m.key, m.default)

    def _on_create_recovery_point(self, m: CreateRecoveryPoint) -> Any:
        if m.label is not None:
            if not isinstance(m.label, str):
                raise InvalidValueError("label", f"must be a str or None, not {type(m.label).__name__}",
                                        context_id=self.cell.id)
            try:
                if m.label:  # "" is a label; otherwise the rules of keys: no NUL, surrogates, over 1 KiB
                    validate_key(m.label, self.cell.id)
            except InvalidValueError as exc:
                raise InvalidValueError("label", exc.reason, context_id=self.cell.id) from None
        self.persistence.tell(SaveRecoveryPoint(self.working, m.label, self._reply()))
        return DEFERRED

    def _on_bind_schema(self, m: BindSchema) -> Any:
        """Bind to `m.schema`: a context without a marker is validated and stamped, one of an older
        schema version is migrated (one replace change), one of another schema or a newer version is
        refused. Each of these is a new version; binding an already stamped, current context is not."""
        schema: Schema = m.schema
        w = self.working
        marker = read_marker(w.metadata, self.cell.id)
        self._binding = True
        try:
            if marker is not None and marker[0] != schema.name:
                raise SchemaNameMismatchError(marker[0], schema.name, context_id=self.cell.id)
            if marker is None:
                self._bind_check(schema, w.data)
                self.schema = schema
                marker_value, growth = self._frozen(SCHEMA_KEY, schema.marker())
                result = self._apply({"meta_set": {SCHEMA_KEY: marker_value}}, growth)
            elif marker[1] != schema.version:
                try:
                    migrated = schema.migrate(thaw(dict(w.data)), marker[1], self.cell.id)
                except Exception:
                    raise
                except BaseException as exc:  # a migration (user code): see _bind_check
                    raise SchemaMigrationError(
                        f"migration of schema {schema.name} from version {marker[1]} raised {exc!r}; nothing "
                        "was changed", schema=schema.name, from_version=marker[1], to_version=schema.version,
                        context_id=self.cell.id) from exc
                data = freeze_mapping(migrated, self.settings.max_value_bytes, self.cell.id)
                self._bind_check(schema, data)
                meta = {**dict(w.metadata), SCHEMA_KEY: freeze_value(SCHEMA_KEY, schema.marker())}
                self.schema = schema
                new_size = _state_size(ContextState(w.id, w.version, immutables.Map(data), immutables.Map(meta)))
                result = self._apply({"data_set": data, "meta_set": meta}, new_size, replace=True)
            else:
                self.schema = schema
                result = w.version
        except _UserError as exc:  # a validator that passed `_bind_check` gave up in `_apply`'s check
            self.schema = None
            raise SchemaValidationError(schema.cls.__qualname__, [("", f"a validator raised {exc.error!r}")],
                                        context_id=self.cell.id) from exc.error
        except BaseException:
            self.schema = None
            raise
        finally:
            self._binding = False
        self._unknown_schema = None
        self.cell.schema = schema
        return result

    def _bind_check(self, schema: Schema, data: Any) -> None:
        """`schema.validate` for a binding. Its caller is the supervisor, which raises what it gets
        in its own thread: a BaseException of an attrs validator (user code) must reach it as our
        error (its cause chained), never raised there, where pykka would stop every actor."""
        try:
            schema.validate(data, self.cell.id)
        except Exception:
            raise
        except BaseException as exc:  # see the docstring
            raise SchemaValidationError(schema.cls.__qualname__, [("", f"a validator raised {exc!r}")],
                                        context_id=self.cell.id) from exc

    def _on_passivate(self, _m: Passivate) -> Any:
        self._passivated = True
        reply = self._reply()
        self.persistence.tell(SaveSnapshot(self.working, reply))
        return DEFERRED if reply is not None else None

    def _on_resume(self, _m: Resume) -> None:
        self._passivated = False

    def _on_rollback(self, m: Rollback) -> None:
        state = m.state
        if state.version > self.working.version:
            return
        if self._deferred:
            # until a commit succeeds, every write waits for its commit (PersistenceError while they fail)
            self._degraded = True
            if self._acked > state.version:
                # acknowledged changes are lost: continue from the durable data at a version above
                # every one ever acknowledged (or handed out), so none is reused, and say so
                lost = (state.version + 1, self._acked)
                state = attrs.evolve(state, version=self.working.version + 1, updated_at=self.settings.clock())
                self._rebase(Rebase(self.cell, state))  # written before the next change
                log.error("context %r: commits failed; acknowledged versions %d-%d are lost; continuing "
                          "from durable data at v%d", self.cell.id, lost[0], lost[1], state.version)
                self.events(ChangesLost, self.cell.id, first=lost[0], last=lost[1], version=state.version)
            self._acked = state.version
        log.warning("context %r: commits failed; back to durable data at version %d (was %d)",
                    self.cell.id, state.version, self.working.version)
        self.working = state
        self.cell.state = state
        self._size = None  # measured again on the next write

    def _rebase(self, rebase: Rebase) -> None:
        """Hand `rebase` to persistence ahead of this context's next commit: by the lane when commits
        go by it (a `take` may find the next commit before a told message is handled)."""
        if self._post is None:
            self.persistence.tell(rebase)
        elif self._post(rebase):
            self.persistence.tell(_ARM)  # the token must come back: a take is due within flush_interval

    def _on_commits_resumed(self, _m: CommitsResumed) -> None:
        self._degraded = False


class _UserError(Exception):
    """Carries an exception raised by user code (a transact fn, a schema's validator), to tell it from
    a bug of ours; any BaseException, which must never leave the actor raised (see `_user_error`)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_NONE: Any = object()  # "the reply is None" (a transact fn that returned None), not "the version"


_MISSING: Any = object()


def check_reserved(keys: list[str], context_id: str) -> None:
    for k in keys:
        if k.startswith(RESERVED_PREFIX):
            raise InvalidValueError(k, f"metadata keys starting with {RESERVED_PREFIX!r} are reserved for hoard",
                                    context_id=context_id)


def _state_event(old: ContextState, change: Change, new: ContextState, rp_id: int | None) -> StateChanged:
    """The one event of version `new.version`."""
    if change.replace:
        return Restored(context_id=new.id, at=change.at, version=new.version, changed=tuple(new.data),
                        removed=tuple(k for k in old.data if k not in new.data),
                        metadata_changed=tuple(new.metadata),
                        metadata_removed=tuple(k for k in old.metadata if k not in new.metadata),
                        rp_id=rp_id if rp_id is not None else 0, by=change.by)
    cls = MetadataChanged if not change.data_set and not change.data_del and (
        change.meta_set or change.meta_del) else StateChanged
    return cls(context_id=new.id, at=change.at, version=new.version, changed=tuple(change.data_set),
               removed=change.data_del, metadata_changed=tuple(change.meta_set), metadata_removed=change.meta_del,
               by=change.by)


#: message class -> its fields that have a validator (what attrs.validate walks, found once per class)
_CHECKS: dict[type, tuple[tuple[Any, Any], ...]] = {}


def _validate(message: Any) -> None:
    """`attrs.validate(message)` without looking its fields up on every message."""
    cls = type(message)
    checks = _CHECKS.get(cls)
    if checks is None:
        checks = _CHECKS[cls] = tuple((a, a.validator) for a in attrs.fields(cls) if a.validator is not None)
    for a, check in checks:
        check(message, a, getattr(message, a.name))


def _state_size(state: ContextState) -> int:
    return len(orjson.dumps(dict(state.data))) + len(orjson.dumps(dict(state.metadata)))
