"""Stored rows to states, shared by the SQL stores: decode and check one snapshot, recovery point or
journal row, and rebuild a context strictly from its newest snapshot plus the journal after it.

Pure functions over a `Codec` (so single-threaded like it); every problem is a `CorruptStateError`
naming the context, the row and (in strict mode) how to load what can still be recovered.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._codec import Codec
from ._errors import CorruptStateError
from ._model import Change, ContextState, apply_change

__all__ = ["FALLBACK_HINT", "decode_change_row", "decode_state_row", "replay_strict"]

FALLBACK_HINT = "open the store with recovery='fallback' to load what can be recovered, or run verify()"


def decode_state_row(codec: Codec, blob: bytes, context_id: str, what: str, version: int) -> ContextState:
    """A snapshot or recovery point row (`what` names it) that must hold `context_id` at `version`."""
    kind = "snapshot" if what.startswith("snapshot") else "recovery_point"
    try:
        state = codec.decode_state(blob, what)
    except CorruptStateError as exc:
        exc.context_id = context_id
        exc.what = kind
        raise
    if state.version != version or state.id != context_id:
        raise CorruptStateError(f"{what}: mismatch: holds {state.id!r} v{state.version}", context_id=context_id,
                                what=kind)
    return state


def decode_change_row(codec: Codec, blob: bytes, context_id: str, what: str, version: int) -> Change:
    """A journal row that must hold the change producing `version`."""
    try:
        change = codec.decode_change(blob, what)
    except CorruptStateError as exc:
        exc.context_id = context_id
        exc.what = "journal"
        raise
    if change.version != version:
        raise CorruptStateError(f"{what}: mismatch: holds v{change.version}", context_id=context_id, what="journal")
    return change


def replay_strict(codec: Codec, context_id: str, stored_version: int, snapshot: tuple[int, bytes] | None,
                  journal: Iterable[tuple[int, bytes]]) -> ContextState:
    """The state at `stored_version`: the newest snapshot `(version, blob)` plus the journal rows after
    it, in version order. Any damage, gap or shortfall raises `CorruptStateError`."""
    if snapshot is None:
        raise CorruptStateError(f"context {context_id!r} has no snapshot; {FALLBACK_HINT}",
                                context_id=context_id, what="snapshot")
    snap_version, snap_blob = snapshot
    state = decode_state_row(codec, snap_blob, context_id, f"snapshot v{snap_version} of {context_id!r}", snap_version)
    for version, blob in journal:
        what = f"journal entry v{version} of {context_id!r}"
        if version > stored_version:
            raise CorruptStateError(f"{what}: beyond the acknowledged version v{stored_version}; {FALLBACK_HINT}",
                                    context_id=context_id, what="journal")
        if version != state.version + 1:
            raise CorruptStateError(f"context {context_id!r}: version gap: journal lacks v{state.version + 1}"
                                    f"..v{version - 1}; {FALLBACK_HINT}", context_id=context_id, what="journal")
        state = apply_change(state, decode_change_row(codec, blob, context_id, what, version))
    if state.version != stored_version:
        raise CorruptStateError(f"context {context_id!r}: journal ends at v{state.version}, but the store "
                                f"acknowledged v{stored_version}; {FALLBACK_HINT}", context_id=context_id,
                                what="journal")
    return state
