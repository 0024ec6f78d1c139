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

from ._errors import ConfigError, CorruptStateError, InvalidContextIdError, InvalidValueError, shown_repr

__all__ = [
    "FIRST_TIME",
    "LAST_TIME",
    "MAX_BY",
    "MAX_DEPTH",
    "MAX_ID_BYTES",
    "MAX_KEY_BYTES",
    "MAX_SECONDS",
    "MAX_STORED_INT",
    "FrozenDict",
    "FrozenList",
    "check_timeout",
    "encoded_size",
    "freeze_mapping",
    "freeze_mapping_sized",
    "freeze_value",
    "freeze_value_sized",
    "thaw",
    "validate_by",
    "validate_id",
    "validate_key",
]

MAX_ID_BYTES = 255
MAX_KEY_BYTES = 1024
MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson (and every JSON peer worth having) encodes


def _immutable(self: object, *_a: object, **_k: object) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is immutable; use hoard.thaw() for a mutable copy")


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
        return dict.__repr__(self)  # prints like the dict it equals (a type check tells them apart)


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
        return list.__repr__(self)


_CONTROL = frozenset(chr(c) for c in (*range(32), *range(127, 160)))  # Unicode category Cc: C0, DEL, C1


#: the most seconds any duration of a config or a call's timeout may be: about 31 years. A wait
#: longer than a few billion seconds overflows the platform's timers (``threading.TIMEOUT_MAX``,
#: ``time_t``) deep inside a call instead of failing where the value is given.
MAX_SECONDS = 10**9
#: the largest integer a store holds (SQLite INTEGER, PostgreSQL bigint): versions, feed offsets,
#: recovery point ids. A larger one is refused by name before it reaches a store.
MAX_STORED_INT = 2**63 - 1
#: the times a stored record holds, in epoch seconds: years 1 to 9999 (what `datetime` reads back)
FIRST_TIME, LAST_TIME = -62_135_596_800.0, 253_402_300_800.0


def check_timeout(timeout: object) -> float:
    """`timeout` if it is a number of seconds (int or float, 0 to `MAX_SECONDS`), else `ConfigError`
    naming it: a wrong timeout is the caller's error, never a TypeError or an OverflowError from deep
    inside a wait."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout <= MAX_SECONDS:
        raise ConfigError(f"timeout must be a number of seconds from 0 to {MAX_SECONDS:,} (or None for the "
                          f"default), not {timeout!r}")
    return float(timeout)


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


#: the longest ``by=`` accepted: who made a change, a short name such as "user:ana" or "svc:billing"
MAX_BY = 128


def validate_by(by: object) -> str | None:
    """Return `by` if it may say who made a change (None, or a printable str of 1 to `MAX_BY`
    characters with no lone surrogate), else raise `InvalidValueError` naming ``by``."""
    if by is None:
        return None
    if type(by) is not str or not by or len(by) > MAX_BY or not by.isprintable():
        shown = repr(by) if len(repr(by)) <= 60 else repr(by)[:57] + "..."
        raise InvalidValueError("by", f"who made a change must be None or a printable str of 1 to {MAX_BY} "
                                      f"characters (such as 'user:ana'), not {type(by).__name__} {shown}")
    _check_encodable(by, lambda reason: InvalidValueError("by", reason))
    return by


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
        if isinstance(key, str):  # a subclass: the str it converts to (its own __str__ may raise)
            try:
                plain = str(key)
            except Exception as exc:  # noqa: BLE001 - user code: whatever it raises means "not a key"
                raise InvalidValueError(key, f"{type(key).__name__}.__str__ raised {_exc_name(exc)}",
                                        context_id=context_id) from None
            return validate_key(plain, context_id)
        raise InvalidValueError(key, f"keys must be str, not {type(key).__name__}", context_id=context_id)
    if not key:
        raise InvalidValueError(key, "keys must not be empty", context_id=context_id)
    if "\x00" in key:
        raise InvalidValueError(key, "keys must not contain NUL", context_id=context_id)
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidValueError(key, f"keys must be at most {MAX_KEY_BYTES} UTF-8 bytes", context_id=context_id)
    if not _surrogate_free(key):
        raise InvalidValueError(key, "contains a lone surrogate, which is not valid Unicode text",
                                context_id=context_id)
    return key


class _Bad(Exception):
    """A value failed a check; `path` is filled in on the way up (no path is built unless it fails)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


def _surrogate_free(s: str) -> bool:
    if s.isascii():
        return True  # the common case costs one C call
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar(v: Any, t: type) -> Any:
    """Check a scalar of exact type `t`; returns it (or raises `_Bad`)."""
    if t is str:
        if not _surrogate_free(v):
            raise _Bad("contains a lone surrogate, which is not valid Unicode text")
        return v
    if t is int:
        if _INT_MIN <= v <= _INT_MAX:
            return v
        raise _Bad("integer outside the 64-bit range JSON peers accept")
    if t is float:
        if math.isfinite(v):
            return v
        raise _Bad(f"{v!r} is not a finite number (JSON has no NaN or Infinity)")
    return v  # None, bool


_SCALAR_TYPES = frozenset({type(None), bool, str, int, float})


def _freeze_any(value: Any, depth: int) -> Any:  # noqa: PLR0911 - one flat return per case of the format; split, its rules would scatter
    # Plain dicts and lists come first and their common elements (ASCII or printable str, None, bool,
    # 64-bit int, finite float) are checked inline: an update of 1,000 mixed values spends most of its
    # time here. A printable str has no lone surrogate (those are category Cs, never printable).
    t = type(value)
    if t is dict or t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} levels (or cyclic)")
        if t is dict:
            return _freeze_dict(value.items(), depth)
        return _freeze_list(value, depth)
    if t in _SCALAR_TYPES:
        return _scalar(value, t)
    if t is FrozenDict or t is FrozenList:
        return value  # already checked on its way in
    if depth >= MAX_DEPTH:
        raise _Bad(f"nested deeper than {MAX_DEPTH} levels (or cyclic)")
    if isinstance(value, Mapping):  # (an exact list or tuple went above)
        return _freeze_dict(_items(value), depth)
    if isinstance(value, (list, tuple)):
        return _freeze_list(_elements(value), depth)
    if isinstance(value, int | float | str):  # subclasses (IntEnum, str Enum...): store the plain value
        # the subclass's own conversion is user code: it may raise (the value is then refused)
        base = int if isinstance(value, int) else float if isinstance(value, float) else str
        try:
            plain = base(value)
        except Exception as exc:  # noqa: BLE001 - whatever it raises means "not storable"
            raise _Bad(f"converting this {type(value).__name__} to {base.__name__} raised {_exc_name(exc)}") from None
        return _freeze_any(plain, depth)
    raise _Bad(f"{type(value).__name__} is not JSON-compatible")


def _freeze_dict(items: Any, depth: int) -> FrozenDict:
    """A frozen copy of a mapping's `items` (the mapping is `depth` levels deep, under the limit)."""
    out = {}
    for k, v in items:
        if type(k) is not str:
            bad = _Bad(f"dict keys must be str, not {type(k).__name__}")
            bad.path.append(f"[{shown_repr(k)}]")
            raise bad
        tv = type(v)
        if (k.isascii() or k.isprintable()) and (
                (tv is str and (v.isascii() or v.isprintable())) or (tv is int and _INT_MIN <= v <= _INT_MAX)
                or v is None or tv is bool or (tv is float and v - v == 0.0)):
            out[k] = v  # the common case, checked inline: no call per element (finite: inf - inf is nan)
            continue
        try:
            if not _surrogate_free(k):
                raise _Bad("contains a lone surrogate, which is not valid Unicode text")
            out[k] = _scalar(v, tv) if tv in _SCALAR_TYPES else _freeze_any(v, depth + 1)
        except _Bad as bad:
            bad.path.append(f"[{k!r}]")
            raise
    return FrozenDict(out)


def _freeze_list(elements: Any, depth: int) -> FrozenList:
    """A frozen copy of a sequence's `elements` (as `_freeze_dict`)."""
    items: list[Any] = []
    for v in elements:
        tv = type(v)
        if (tv is str and (v.isascii() or v.isprintable())) or (tv is int and _INT_MIN <= v <= _INT_MAX) or (
                v is None or tv is bool or (tv is float and v - v == 0.0)):
            items.append(v)  # the common case, checked inline (as in _freeze_dict)
            continue
        try:
            items.append(_scalar(v, tv) if tv in _SCALAR_TYPES else _freeze_any(v, depth + 1))
        except _Bad as bad:
            bad.path.append(f"[{len(items)}]")  # the index of the element that failed
            raise
    return FrozenList(items)


def _items(mapping: Any) -> list[tuple[Any, Any]]:
    """The items of a mapping that is not a plain dict: its own methods run, and may raise."""
    try:
        return list(mapping.items())
    except Exception as exc:  # noqa: BLE001 - user code: whatever it raises means "not storable"
        raise _Bad(f"reading this {type(mapping).__name__}'s items raised {_exc_name(exc)}") from None


def _elements(sequence: Any) -> list[Any]:
    """The elements of a list or tuple subclass: its own __iter__ runs, and may raise."""
    try:
        return list(sequence)
    except Exception as exc:  # noqa: BLE001 - see _items
        raise _Bad(f"reading this {type(sequence).__name__}'s elements raised {_exc_name(exc)}") from None


def _exc_name(exc: BaseException) -> str:
    """``Type('message')`` of an exception raised by user code (whose own __str__ may raise too)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - name its type only
        return type(exc).__name__
    return f"{type(exc).__name__}({shown_repr(text)})"


def _freeze(value: Any, key: str, path: str, depth: int, context_id: str | None) -> Any:
    """Frozen `value`, or `InvalidValueError` naming `key` and the path inside the value."""
    try:
        return _freeze_any(value, depth)
    except Exception as exc:  # noqa: BLE001 - see _refused
        raise _refused(exc, value, key, path, context_id) from None


def _refused(exc: Exception, value: Any, key: str, path: str, context_id: str | None) -> InvalidValueError:
    """The `InvalidValueError` for `exc`, raised while checking `value` (of `key`, at `path`)."""
    if isinstance(exc, _Bad):
        return InvalidValueError(key, exc.reason, path=path + "".join(reversed(exc.path)), context_id=context_id)
    if isinstance(exc, RecursionError):
        return InvalidValueError(key, f"nested too deeply (or cyclic) to check; the limit is {MAX_DEPTH}",
                                 path=path, context_id=context_id)
    # the value's own code (a property, __instancecheck__) raised
    return InvalidValueError(key, f"checking this {type(value).__name__} raised {_exc_name(exc)}",
                             path=path, context_id=context_id)


def freeze_value(key: str, value: Any, max_bytes: int | None = None, context_id: str | None = None) -> Any:
    """Check one value and return its frozen form; raise `InvalidValueError` naming `key` if it is not
    JSON-compatible, deeper than `MAX_DEPTH`, or (when `max_bytes` is given) larger than `max_bytes`
    once encoded as JSON."""
    tv = type(value)
    if max_bytes is None and ((tv is str and (value.isascii() or value.isprintable())) or (
            tv is int and _INT_MIN <= value <= _INT_MAX) or value is None or tv is bool or (
            tv is float and value - value == 0.0)):
        return value  # a scalar that passes the checks inline (as in freeze_mapping)
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
    try:
        if not isinstance(mapping, Mapping):
            raise _Bad(f"expected a mapping of keys to values, not {type(mapping).__name__}")
        items = mapping.items() if type(mapping) is dict else _items(mapping)
    except _Bad as bad:
        raise InvalidValueError(None, bad.reason, context_id=context_id) from None
    except Exception as exc:  # noqa: BLE001 - its own code (__class__, __instancecheck__) raised
        raise InvalidValueError(None, f"checking this {type(mapping).__name__} raised {_exc_name(exc)}",
                                context_id=context_id) from None
    out = {}
    if max_bytes is not None:
        for k, v in items:
            key = validate_key(k, context_id)
            out[key] = freeze_value(key, v, max_bytes, context_id)
        return out
    for k, v in items:
        # the common case checked inline (an update of 1,000 keys makes no call per key): an ASCII key
        # (its length is its UTF-8 size) without NUL, and a scalar value; anything else takes the full checks
        if type(k) is str and k.isascii() and 0 < len(k) <= MAX_KEY_BYTES and "\x00" not in k:
            key = k
        else:
            key = validate_key(k, context_id)
        tv = type(v)
        if (tv is str and (v.isascii() or v.isprintable())) or (tv is int and _INT_MIN <= v <= _INT_MAX) or (
                v is None or tv is bool or (tv is float and v - v == 0.0)):  # finite: inf - inf is nan
            out[key] = v
        elif tv is dict or tv is list:
            try:  # straight to the container's checks (a top-level value is at depth 0)
                out[key] = _freeze_dict(v.items(), 0) if tv is dict else _freeze_list(v, 0)
            except Exception as exc:  # noqa: BLE001 - translated as _freeze does
                raise _refused(exc, v, key, "", context_id) from None
        else:
            out[key] = _freeze(v, key, "", 0, context_id)
    return out


class _NotPlain(Exception):
    """A value the plain-JSON fast path of `freeze_mapping_sized` leaves to the full checks."""


_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})  # once orjson encoded them: nothing left to check
_dict_set, _list_set = dict.__setitem__, list.__setitem__  # fill in a frozen copy's nested containers
#: what orjson must refuse for the fast path to skip a check: a datetime or a dataclass would be encoded
#: (then refused by the walk, after a wasted encode); with these options it raises at once
_ENCODE_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _plain_dict(value: dict[str, Any], depth: int) -> FrozenDict:
    """A frozen copy of a dict orjson has just encoded: its keys are str, its strs surrogate-free and its
    ints in range, so only the types of its values (exact JSON types), finite floats and the depth are
    left to check. One copy into the frozen type (at its first nested container, or at the end); frozen
    copies of nested containers are put in their places in it (as `_plain_list` does; a dict of them
    to merge in one call cost 1.6 % more of `freeze_mapping_sized` on the bench's update, callgrind)."""
    if depth >= MAX_DEPTH:
        raise _NotPlain
    out = None
    d = depth + 1
    for k, v in value.items():
        t = type(v)
        if t in _PLAIN_SCALARS:
            continue
        if t is dict:
            f: Any = _plain_dict(v, d)
        elif t is list or t is tuple:
            f = _plain_list(v, d)
        elif (t is float and v - v == 0.0) or t is FrozenDict or t is FrozenList:  # finite: inf - inf is nan
            continue
        else:
            raise _NotPlain
        if out is None:
            out = FrozenDict(value)  # an existing key is replaced below: the copy keeps its size and order
        _dict_set(out, k, f)
    return FrozenDict(value) if out is None else out


def _plain_list(value: list[Any] | tuple[Any, ...], depth: int) -> FrozenList:
    """`_plain_dict` for a list or tuple (a counter, not enumerate: most lists hold no container)."""
    if depth >= MAX_DEPTH:
        raise _NotPlain
    out = None
    d = depth + 1
    i = -1
    for v in value:
        i += 1
        t = type(v)
        if t in _PLAIN_SCALARS:
            continue
        if t is dict:
            f: Any = _plain_dict(v, d)
        elif t is list or t is tuple:
            f = _plain_list(v, d)
        elif (t is float and v - v == 0.0) or t is FrozenDict or t is FrozenList:
            continue
        else:
            raise _NotPlain
        if out is None:
            out = FrozenList(value)
        _list_set(out, i, f)
    return FrozenList(value) if out is None else out


def _plain_mapping(mapping: dict[str, Any], context_id: str | None) -> dict[str, Any]:
    """`freeze_mapping`'s result for a dict orjson has just encoded (see `_plain_dict`); `_NotPlain`
    for anything it leaves to the full checks (a bad key among them)."""
    # every key at once, at C speed: all ASCII (then a key's length is its UTF-8 size), none empty or too
    # long, no NUL (keys are str already: orjson refuses others). Else key by key, in order.
    joined = "".join(mapping)
    if not (joined.isascii() and "\x00" not in joined and "" not in mapping
            and max(map(len, mapping), default=0) <= MAX_KEY_BYTES):
        try:
            for k in mapping:
                validate_key(k, context_id)
        except InvalidValueError:
            raise _NotPlain from None  # the full checks name it, in order with the values before it
    if CFREEZE is not None:
        frozen: dict[str, Any] = CFREEZE.plain_top(mapping)  # the same walk in C
        return frozen
    return _plain_top(mapping)


def _plain_top(mapping: dict[str, Any]) -> dict[str, Any]:
    """A plain dict copy of `mapping` whose containers are frozen (`_plain_dict` at the top level)."""
    out = mapping.copy()
    for k, v in mapping.items():
        t = type(v)
        if t in _PLAIN_SCALARS:
            continue
        if t is dict:
            out[k] = _plain_dict(v, 0)
        elif t is list or t is tuple:
            out[k] = _plain_list(v, 0)
        elif not ((t is float and v - v == 0.0) or t is FrozenDict or t is FrozenList):
            raise _NotPlain
    return out


def _load_cfreeze() -> Any:
    """storage/_cfreeze.c, configured, when it was built (an optional extension); else None, and the
    Python walks of this module and `_codec` run instead (they are its reference: the same values
    accepted and refused, equal results of the same types; tests/storage/test_cfreeze.py)."""
    try:
        from . import _cfreeze  # noqa: PLC0415 - optional: absent where no C compiler was at hand
    except ImportError:
        return None
    _cfreeze.configure(FrozenDict, FrozenList, _NotPlain, CorruptStateError, MAX_DEPTH)
    return _cfreeze


#: the C freezer (`_cfreeze`), or None where it was not built
CFREEZE = _load_cfreeze()


def freeze_mapping_sized(mapping: object, context_id: str | None = None) -> tuple[dict[str, Any], int]:
    """`freeze_mapping` (no `max_bytes`) and the exact size of its result encoded as compact JSON.

    A plain dict of plain JSON values (the common case: an update of 1,000 keys) is encoded first: the
    encoder checks at C speed what the full checks would check element by element (str keys, no lone
    surrogate, 64-bit ints), and its length is the size. Anything else, and anything it refuses, takes
    `freeze_mapping`, which accepts and refuses exactly the same values and names what is wrong.
    """
    if type(mapping) is dict:
        try:
            encoded = orjson.dumps(mapping, option=_ENCODE_STRICT)
            return _plain_mapping(mapping, context_id), len(encoded)
        except (_NotPlain, orjson.JSONEncodeError, RecursionError):
            pass
    out = freeze_mapping(mapping, None, context_id)
    return out, len(orjson.dumps(out))


def freeze_value_sized(key: str, value: Any, context_id: str | None = None) -> tuple[Any, int]:
    """`freeze_value` (no `max_bytes`) and the exact size of its result encoded as compact JSON.

    A plain dict, list or tuple is encoded first, then frozen by the C freezer (as
    `freeze_mapping_sized` does for each value of an update): what the encoder checks at C speed is
    not checked again. Anything else, anything it refuses, or no C freezer: `freeze_value`, which
    accepts and refuses exactly the same values and names what is wrong.
    """
    t = type(value)
    if CFREEZE is not None and (t is dict or t is list or t is tuple):
        try:
            encoded = orjson.dumps(value, option=_ENCODE_STRICT)
            return CFREEZE.plain(value, 0), len(encoded)
        except (_NotPlain, orjson.JSONEncodeError, RecursionError):
            pass
    frozen = freeze_value(key, value, None, context_id)
    return frozen, encoded_size(frozen)


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
