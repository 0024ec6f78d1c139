"""Validation and freezing of context ids, keys and values.

Values stored in a context are JSON-compatible: None, bool, int (64-bit), finite float, str, lists and
dicts with str keys, nested at most `MAX_DEPTH` levels. On the way in they are checked and *frozen*:
dicts become `FrozenDict`, lists `FrozenList`. Both subclass the builtin type, so they compare equal to
plain dicts and lists and encode as JSON at C speed, but every mutating method raises `TypeError`.
No caller can change a stored value behind its actor's back. `thaw()` gives a mutable deep copy.

Everything here runs in the calling thread and touches no shared state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

import orjson

from ._errors import InvalidContextIdError, InvalidValueError

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_BYTES",
    "MAX_KEY_BYTES",
    "FrozenDict",
    "FrozenList",
    "encoded_size",
    "freeze_mapping",
    "freeze_value",
    "thaw",
    "validate_id",
    "validate_key",
]

MAX_ID_BYTES = 255
MAX_KEY_BYTES = 1024
MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson (and every JSON peer worth having) encodes


def _immutable(self: object, *_a: object, **_k: object) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is immutable; use runtime.thaw() for a mutable copy")


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses mutation. Equal to (and JSON-encoded like) a plain dict."""

    __slots__ = ()
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: object) -> FrozenDict:
        return self

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


class FrozenList(list):  # type: ignore[type-arg]
    """A list that refuses mutation. Equal to (and JSON-encoded like) a plain list."""

    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _immutable
    sort = reverse = __iadd__ = __imul__ = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: object) -> FrozenList:
        return self

    def __repr__(self) -> str:
        return f"FrozenList({list.__repr__(self)})"


_CONTROL = frozenset(chr(c) for c in (*range(32), *range(127, 160)))  # Unicode category Cc: C0, DEL, C1


def _control_char(s: str) -> bool:
    if s.isprintable():  # C speed; false for every control character (and for some harmless ones)
        return False
    return not _CONTROL.isdisjoint(s)


def validate_id(context_id: object) -> str:
    """Return `context_id` if it may name a context, else raise `InvalidContextIdError`.

    A context id is a non-empty str of at most 255 UTF-8 bytes with no NUL or other control
    characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) and no lone surrogates. Any other
    Unicode (slashes, ``..``, spaces, emoji) is allowed and kept exactly; ids are never used as file
    names, only as SQL parameters.
    """
    if type(context_id) is not str:
        raise InvalidContextIdError(context_id, f"must be a str, not {type(context_id).__name__}")
    if not context_id:
        raise InvalidContextIdError(context_id, "must not be empty")
    if len(context_id) > MAX_ID_BYTES or len(context_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidContextIdError(context_id, f"longer than {MAX_ID_BYTES} UTF-8 bytes")
    if _control_char(context_id):
        raise InvalidContextIdError(context_id, "contains NUL or control characters")
    _check_encodable(context_id, lambda reason: InvalidContextIdError(context_id, reason))
    return context_id


def _check_encodable(s: str, error: Any) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise error("contains a lone surrogate, which is not valid Unicode text") from None


def validate_key(key: object, context_id: str | None = None) -> str:
    """Return `key` if it may be a top-level key, else raise `InvalidValueError`.

    A key is a non-empty str of at most 1,024 UTF-8 bytes without NUL.
    """
    if type(key) is not str:
        if isinstance(key, str):
            return validate_key(str(key), context_id)
        raise InvalidValueError(key, f"keys must be str, not {type(key).__name__}", context_id=context_id)
    if not key:
        raise InvalidValueError(key, "keys must not be empty", context_id=context_id)
    if "\x00" in key:
        raise InvalidValueError(key, "keys must not contain NUL", context_id=context_id)
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidValueError(key, f"keys must be at most {MAX_KEY_BYTES} UTF-8 bytes", context_id=context_id)
    _check_encodable(key, lambda reason: InvalidValueError(key, reason, context_id=context_id))
    return key


_SCALARS = frozenset({type(None), bool, str})


def _freeze(value: Any, key: str, path: str, depth: int, context_id: str | None) -> Any:
    t = type(value)
    if t in _SCALARS:
        if t is str:
            _check_encodable(value, lambda r: InvalidValueError(key, r, path=path, context_id=context_id))
        return value
    if t is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise InvalidValueError(key, "integer outside the 64-bit range JSON peers accept", path=path,
                                context_id=context_id)
    if t is float:
        if math.isfinite(value):
            return value
        raise InvalidValueError(key, f"{value!r} is not a finite number (JSON has no NaN or Infinity)",
                                path=path, context_id=context_id)
    if depth >= MAX_DEPTH:
        raise InvalidValueError(key, f"nested deeper than {MAX_DEPTH} levels (or cyclic)", path=path,
                                context_id=context_id)
    if t is FrozenDict or t is FrozenList:
        return value  # already checked on its way in
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidValueError(key, f"dict keys must be str, not {type(k).__name__}",
                                        path=f"{path}[{k!r}]", context_id=context_id)
            _check_encodable(k, lambda r: InvalidValueError(key, r, path=path, context_id=context_id))
            out[k] = _freeze(v, key, f"{path}[{k!r}]", depth + 1, context_id)
        return FrozenDict(out)
    if isinstance(value, (list, tuple)):
        return FrozenList([_freeze(v, key, f"{path}[{i}]", depth + 1, context_id) for i, v in enumerate(value)])
    if isinstance(value, bool | int | float | str):  # subclasses (IntEnum, str Enum...): store the plain value
        base = bool if isinstance(value, bool) else int if isinstance(value, int) else float if isinstance(value, float) else str
        return _freeze(base(value), key, path, depth, context_id)
    raise InvalidValueError(key, f"{type(value).__name__} is not JSON-compatible", path=path,
                            context_id=context_id)


def freeze_value(key: str, value: Any, max_bytes: int | None = None, context_id: str | None = None) -> Any:
    """Check one value and return its frozen form; raise `InvalidValueError` naming `key` if it is not
    JSON-compatible, deeper than `MAX_DEPTH`, or (when `max_bytes` is given) larger than `max_bytes`
    once encoded as JSON."""
    frozen = _freeze(value, key, "", 0, context_id)
    if max_bytes is not None:
        size = encoded_size(frozen)
        if size > max_bytes:
            raise InvalidValueError(key, f"{size} bytes encoded, over max_value_bytes={max_bytes}",
                                    context_id=context_id)
    return frozen


def freeze_mapping(mapping: object, max_bytes: int | None = None, context_id: str | None = None) -> dict[str, Any]:
    """Check a mapping of top-level keys to values; return a new dict of validated keys to frozen values.

    Raises `InvalidValueError` for the first bad key or value (and for a non-mapping argument).
    """
    if not isinstance(mapping, Mapping):
        raise InvalidValueError(None, f"expected a mapping of keys to values, not {type(mapping).__name__}",
                                context_id=context_id)
    return {validate_key(k, context_id): freeze_value(k, v, max_bytes, context_id) for k, v in mapping.items()}


def encoded_size(value: Any) -> int:
    """Bytes of `value` (already frozen) encoded as compact JSON. Exact: the size limits must never
    let a state grow past what a reader accepts (``max_state_bytes`` bounds decompression)."""
    t = type(value)
    if t is str and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return len(value) + 2  # fast path for the most common case: nothing to escape
    return len(orjson.dumps(value))


def thaw(value: Any) -> Any:
    """Return a mutable deep copy of a (frozen) value: plain dicts and lists all the way down."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value
