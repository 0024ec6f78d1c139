"""Schemas: binding a context to an attrs class, validated and typed through one cattrs converter.

A `Schema` wraps an attrs class whose fields are the context's top-level keys. `validate()` checks a
context's data (a mapping of keys to frozen JSON values) against it and raises one
`SchemaValidationError` listing *every* bad field; `structure()` returns an instance of the class
(``tracker.typed()``) and `unstructure()` turns one back into plain data to write. Schema evolution is
a version number stored with the context (`SCHEMA_KEY` in its metadata, see `Schema.marker`) and
migration functions, one per version step, applied by `Schema.migrate` / `Schema.upgrade`.

Validation is strict, JSON-typed, and forbids extra keys:

* ``str``, ``int``, ``bool`` accept exactly that JSON type (no ``"7"`` for an int, no ``True`` for an
  int, no ``5`` for a str: cattrs' default converter would coerce all of these). ``float`` also
  accepts an int (JSON does not tell ``1`` from ``1.0``).
* lists, tuples and sets come from JSON lists (never from a str or a dict); mappings come from JSON
  objects with str keys; nested attrs classes from JSON objects; enums and literals match a member
  value of exactly that type.
* A key of the data that is not a field of the class (at any depth) is an error: a schema that let
  unknown keys through would let a typo (``"emial"``) be stored next to a missing required field.
  Declare the field (with a default) to allow a key.
* Fields with defaults may be missing from the data; ``typed()`` fills in the default.
* attrs validators on the class (``attrs.field(validator=...)``) run too, once every field has the
  right type; their errors are reported like the others.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, attrs classes,
``list``/``Sequence``/``tuple`` (homogeneous or fixed), ``set``/``frozenset``, ``dict``/``Mapping``
with str keys, ``Literal`` of JSON scalars, ``Enum`` with JSON scalar values, unions and
``Optional`` of these. Anything else (``datetime``, ``bytes``, a plain class) has no JSON form in a
context and is refused by `Schema.of` with `ConfigError`, not at the first write.

Everything here is pure: no threads, no I/O. A `Schema` is immutable and may be shared by every
context actor that uses it: its structure hooks are generated once, in `Schema.of`, and afterwards
only called (cattrs hooks are plain functions; calling them concurrently is safe).
"""

from __future__ import annotations

import enum
import types
import typing
import warnings
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import attrs
import cattrs
import immutables
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
    StructureHandlerNotFoundError,
)
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn

from ._errors import ConfigError, CorruptStateError, HoardError
from ._values import thaw

__all__ = [
    "SCHEMA_KEY",
    "Migration",
    "Schema",
    "SchemaMigrationError",
    "SchemaNameMismatchError",
    "SchemaNameWarning",
    "SchemaValidationError",
    "as_schema",
    "make_schema_converter",
    "read_marker",
]

SCHEMA_KEY = "hoard:schema"
"""The reserved metadata key under which a schema-bound context stores ``{"name": ..., "version": N}``."""

Migration = Callable[[dict[str, Any]], Mapping[str, Any]]
"""A migration step: takes the (mutable, plain) data of version N, returns the data of version N+1."""


# -- errors ----------------------------------------------------------------------------------------
class SchemaValidationError(HoardError, ValueError):
    """A change (or a stored state) does not match the context's schema. Nothing was changed.

    Differs from `InvalidValueError`: that one refuses what is not JSON at all (a set, NaN, a huge
    int, a too-large value); this one refuses JSON-valid data that is not what the schema says (a
    str where the class has an int, a missing required field, a key the class has no field for).

    Attributes:
        context_id: the context, or None when validating outside one.
        schema: the schema's class name.
        errors: every bad field as ``(path, message)``, in field order; `path` is the field's key
            (``"age"``), dotted for nested classes (``"address.zip"``), with ``[i]`` for list items
            and ``['k']`` for mapping keys; ``""`` means the data as a whole.
    """

    def __init__(self, schema: str, errors: list[tuple[str, str]], *, context_id: str | None = None) -> None:
        self.schema = schema
        self.errors = errors
        self.context_id = context_id
        where = f"context {context_id!r}" if context_id is not None else "data"
        listed = "; ".join(f"{path or '(whole state)'}: {msg}" for path, msg in errors)
        n = len(errors)
        super().__init__(f"{where} does not match schema {schema} ({n} bad field{'s' if n != 1 else ''}): "
                         f"{listed}. Nothing was changed; fix these fields and retry")


class SchemaMigrationError(HoardError):
    """Stored data cannot be brought to the schema's version: a migration step is missing, a
    migration function raised or returned something else than a mapping, the data was written by a
    newer version of the schema (or by another schema). Nothing was changed.

    Differs from `SchemaValidationError`: that one says data does not match a schema; this one says
    the path from the stored version to the schema's version is broken.

    Attributes:
        context_id: the context, or None outside one.
        schema: the schema's name.
        from_version: the stored version.
        to_version: the schema's version.
        missing: the version whose migration step is missing, else None.
    """

    def __init__(self, message: str, *, schema: str, from_version: int, to_version: int,
                 context_id: str | None = None, missing: int | None = None) -> None:
        self.schema = schema
        self.from_version = from_version
        self.to_version = to_version
        self.context_id = context_id
        self.missing = missing
        where = f"context {context_id!r}: " if context_id is not None else ""
        super().__init__(f"{where}{message}")


class SchemaNameMismatchError(SchemaValidationError):
    """A context is bound to a schema of another name than the one given (or known here).

    Most often the same class under a new default name: a class defined in a script is
    ``__main__.Customer``, and ``models.Customer`` once moved. Give the schema its stored name
    (``Schema.of(Customer, name=stored)``) if it is the same class; otherwise the context belongs to
    another schema. Nothing was changed. A `SchemaValidationError` for callers that catch that.

    Attributes:
        stored: the schema name stored with the context (None: one this system does not know).
        given: the name of the schema given or looked for.
    """

    def __init__(self, stored: str, given: str | None, *, context_id: str | None = None) -> None:
        self.stored = stored
        self.given = given
        self.schema = stored
        self.errors = [("", f"bound to schema {stored!r}")]
        self.context_id = context_id
        where = f"context {context_id!r}" if context_id is not None else "the data"
        if given is None:
            text = (f"{where} is bound to schema {stored!r}, which this system does not know; activate it "
                    f"with schema=Schema.of(YourClass, name={stored!r}) before changing it")
        else:
            text = (f"{where} is bound to schema {stored!r}, not {given!r}; if it is the same class (moved or "
                    f"renamed), build it with Schema.of(YourClass, name={stored!r}); nothing was changed")
        HoardError.__init__(self, text)


class SchemaNameWarning(UserWarning):
    """A schema was built without an explicit name for a class defined in ``__main__``: its default
    name (``__main__.Cls``) changes as soon as the class moves to a module, and contexts bound under
    the old name then refuse it. Pass ``name=`` to `Schema.of`."""


class _Mismatch(TypeError):
    """Raised by our strict hooks; its text is the whole message shown for that field."""


# -- the converter ---------------------------------------------------------------------------------
_NoneType = type(None)
_SCALARS: frozenset[Any] = frozenset({str, int, float, bool, _NoneType})
_SEQUENCES: frozenset[Any] = frozenset({list, tuple, abc.Sequence, abc.MutableSequence})
_SETS: frozenset[Any] = frozenset({set, frozenset, abc.Set, abc.MutableSet})
_MAPPINGS: frozenset[Any] = frozenset({dict, abc.Mapping, abc.MutableMapping})


def _kind(v: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, (list, tuple)):
        return "list"
    return type(v).__name__


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(t: Any) -> str:
    if t is _NoneType:
        return "None"
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    return str(t).replace("typing.", "").replace("collections.abc.", "")


def _scalar_hook(t: type) -> Callable[[Any, Any], Any]:
    """Strict hook for ``str`` / ``int`` / ``float`` / ``bool``. Registered by class (a singledispatch,
    as cattrs registers its own coercing ones), so it also receives enums that subclass the scalar
    (``IntEnum``, ``StrEnum``): `target` tells them apart."""
    if t is float:
        def structure_float(v: Any, target: Any) -> Any:
            if target is not float:
                return _structure_enum(v, target)
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _Mismatch(f"expected float, got {_kind(v)} {_shown(v)}")
        return structure_float

    name = t.__name__

    def structure_exact(v: Any, target: Any) -> Any:
        if target is not t:
            return _structure_enum(v, target)
        if type(v) is t:
            return v
        raise _Mismatch(f"expected {name}, got {_kind(v)} {_shown(v)}")
    return structure_exact


def _structure_enum(v: Any, target: type[enum.Enum]) -> Any:
    """The member whose value is `v`, of exactly `v`'s type (``True`` is no member of an IntEnum of 1)."""
    try:
        member = target(v)
    except (ValueError, TypeError):
        member = None
    if member is None or type(member.value) is not type(v):
        allowed = ", ".join(_shown(m.value) for m in target)
        raise _Mismatch(f"expected one of {allowed} ({target.__name__}), got {_shown(v)}")
    return member


def _origin(t: Any) -> Any:
    return typing.get_origin(t) or t


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (Union, types.UnionType)


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _literal_factory(t: Any, _conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    values = {(type(a), a) for a in typing.get_args(t)}  # (type, value): Literal[1] must refuse True
    allowed = ", ".join(_shown(a) for a in typing.get_args(t))

    def structure_literal(v: Any, _: Any) -> Any:
        try:
            if (type(v), v) in values:
                return v
        except TypeError:
            pass
        raise _Mismatch(f"expected one of {allowed}, got {_shown(v)}")
    return structure_literal


def _claims_union(t: Any) -> bool:
    """Unions with a scalar, None or literal member (so every ``Optional``) are ours: cattrs' own
    union handling would coerce scalars. Unions of classes only are left to cattrs' disambiguation."""
    return _is_union(t) and any(a in _SCALARS or typing.get_origin(a) is Literal for a in typing.get_args(t))


def _union_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    args = typing.get_args(t)
    scalars = {a for a in args if a in _SCALARS}
    literals = {(type(v), v) for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)}
    others = [a for a in args if a not in _SCALARS and typing.get_origin(a) is not Literal]
    ints_as_floats = float in scalars and int not in scalars
    other_type: Any = None
    other_hook: Callable[[Any, Any], Any] | None = None
    if others:
        other_type = others[0] if len(others) == 1 else Union[tuple(others)]  # noqa: UP007 - built at run time
        other_hook = conv.get_structure_hook(other_type)
    name = " | ".join(_type_name(a) for a in args)

    def structure_union(v: Any, _: Any) -> Any:
        tv = type(v)
        if tv in scalars:
            return v
        if ints_as_floats and tv is int:
            return float(v)
        if literals:
            try:
                if (tv, v) in literals:
                    return v
            except TypeError:
                pass
        if other_hook is not None:
            try:
                return other_hook(v, other_type)
            except Exception:
                if isinstance(v, (Mapping, list, tuple)):
                    raise  # a container that almost fits: its own detailed errors say more
        raise _Mismatch(f"expected {name}, got {_kind(v)} {_shown(v)}") from None
    return structure_union


def _is_sequence(t: Any) -> bool:
    o = _origin(t)
    if o is tuple:
        args = typing.get_args(t)
        return not args or (len(args) == 2 and args[1] is Ellipsis)
    return o in _SEQUENCES


def _is_fixed_tuple(t: Any) -> bool:
    return _origin(t) is tuple and not _is_sequence(t)


def _is_set(t: Any) -> bool:
    return _origin(t) in _SETS


def _is_mapping(t: Any) -> bool:
    return _origin(t) in _MAPPINGS


def _items_hook(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], list[Any]]:
    """Structure a JSON list into a list of the element type, with an error per bad item."""
    args = typing.get_args(t)
    elem = args[0] if args else Any
    list_of: Any = list  # subscripted at run time: mypy cannot check list[elem] for a runtime `elem`
    return typing.cast(Callable[[Any, Any], list[Any]], cattrs.cols.list_structure_factory(list_of[elem], conv))


def _sequence_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    items = _items_hook(t, conv)
    make: Callable[[list[Any]], Any] = tuple if _origin(t) is tuple else (lambda x: x)

    def structure_sequence(v: Any, _: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(f"expected a list, got {_kind(v)} {_shown(v)}")
        return make(items(v, list))
    return structure_sequence


def _set_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    items = _items_hook(t, conv)
    make: Callable[[list[Any]], Any] = frozenset if _origin(t) in (frozenset, abc.Set) else set

    def structure_set(v: Any, _: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(f"expected a list, got {_kind(v)} {_shown(v)}")
        try:
            return make(items(v, list))
        except TypeError as exc:  # an unhashable item (a list of lists into a set)
            raise _Mismatch(f"items cannot be set members ({exc})") from None
    return structure_set


def _fixed_tuple_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    elems = typing.get_args(t)
    hooks = [conv.get_structure_hook(e) for e in elems]

    def structure_fixed_tuple(v: Any, _: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(f"expected a list of {len(elems)} items, got {_kind(v)} {_shown(v)}")
        if len(v) != len(elems):
            raise _Mismatch(f"expected a list of {len(elems)} items, got {len(v)} items")
        out, errors = [], []
        for i, (hook, e, item) in enumerate(zip(hooks, elems, v, strict=True)):
            try:
                out.append(hook(item, e))
            except Exception as exc:  # noqa: BLE001 - collected and re-raised as one group below
                exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"@ index {i}", i, e)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {t!r}", errors, t)
        return tuple(out)
    return structure_fixed_tuple


def _mapping_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    args = typing.get_args(t)
    value_type = args[1] if len(args) == 2 else Any
    inner = make_mapping_structure_fn(dict[str, value_type], conv, detailed_validation=True)  # type: ignore[valid-type]

    def structure_mapping(v: Any, _: Any) -> Any:
        if not isinstance(v, Mapping):
            raise _Mismatch(f"expected an object, got {_kind(v)} {_shown(v)}")
        return inner(v, dict)
    return structure_mapping


def _is_attrs_class(t: Any) -> bool:
    o = _origin(t)
    return isinstance(o, type) and attrs.has(o)


def _attrs_factory(t: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    inner = make_dict_structure_fn(t, conv)  # detailed validation and forbid_extra_keys: from `conv`
    name = _type_name(t)

    def structure_object(v: Any, _: Any) -> Any:
        if not isinstance(v, Mapping):
            raise _Mismatch(f"expected an object ({name}), got {_kind(v)} {_shown(v)}")
        return inner(v, t)
    return structure_object


def make_schema_converter() -> cattrs.Converter:
    """The project converter for schema-bound contexts: detailed validation, strict JSON types, extra
    keys forbidden (see the module docstring).

    Not `make_converter()`: that one passes ``Mapping`` fields through unchecked, which is right for
    the `data` / `metadata` of our persisted models (already validated JSON) and wrong for user
    fields, which are exactly what must be checked here; and its scalars coerce (``int("7")``).
    Every `Schema` builds its own converter with this factory, once, in `Schema.of`.
    """
    conv = cattrs.Converter(
        detailed_validation=True,
        forbid_extra_keys=True,
        # writing a typed object back must produce JSON-shaped data: sets and tuples become lists
        unstruct_collection_overrides={abc.Set: list, abc.MutableSet: list, abc.Sequence: list,
                                       abc.MutableSequence: list},
    )
    for scalar in (str, int, float, bool):
        conv.register_structure_hook(scalar, _scalar_hook(scalar))
    conv.register_structure_hook(enum.Enum, _structure_enum)
    conv.register_structure_hook_factory(_is_literal, _literal_factory)
    conv.register_structure_hook_factory(_claims_union, _union_factory)
    conv.register_structure_hook_factory(_is_sequence, _sequence_factory)
    conv.register_structure_hook_factory(_is_fixed_tuple, _fixed_tuple_factory)
    conv.register_structure_hook_factory(_is_set, _set_factory)
    conv.register_structure_hook_factory(_is_mapping, _mapping_factory)
    conv.register_structure_hook_factory(_is_attrs_class, _attrs_factory)
    return conv


def _check_type(t: Any, where: str, seen: set[type]) -> None:  # noqa: PLR0911, PLR0912 - a branch per kind of type
    """Refuse a field type that has no JSON form (so a bad schema fails at `Schema.of`)."""
    if t is Any or t is None or t in _SCALARS or isinstance(t, typing.TypeVar):
        return
    supertype = getattr(t, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        _check_type(supertype, where, seen)
        return
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Literal:
        bad = [a for a in args if type(a) not in _SCALARS]
        if bad:
            raise ConfigError(f"{where}: Literal values must be JSON scalars, not {bad!r}")
        return
    if _is_union(t):
        for a in args:
            _check_type(a, where, seen)
        return
    if _is_enum(t):
        bad = [m.name for m in t if type(m.value) not in _SCALARS]
        if bad:
            raise ConfigError(f"{where}: enum {t.__name__} has members whose values are not JSON scalars: {bad}")
        return
    if _is_sequence(t) or _is_set(t):
        _check_type(args[0] if args else Any, f"{where}[]", seen)
        return
    if _is_fixed_tuple(t):
        for i, a in enumerate(args):
            _check_type(a, f"{where}[{i}]", seen)
        return
    if _is_mapping(t):
        if args and args[0] is not str:
            raise ConfigError(f"{where}: mapping keys must be str (JSON object keys), not {_type_name(args[0])}")
        _check_type(args[1] if args else Any, f"{where}[]", seen)
        return
    cls = _origin(t)
    if isinstance(cls, type) and attrs.has(cls):
        if cls in seen:
            return  # recursive classes (a tree of nodes) are fine
        seen.add(cls)
        try:
            attrs.resolve_types(cls)
        except (NameError, TypeError) as exc:
            raise ConfigError(f"{where}: cannot resolve the field types of {cls.__qualname__} ({exc}); "
                              "define the classes it names at module level") from exc
        for f in attrs.fields(cls):
            _check_type(f.type, f"{where}.{f.name}", seen)
        return
    raise ConfigError(f"{where}: type {_type_name(t)} has no JSON form in a context; use str, int, float, "
                      "bool, None, lists, dicts with str keys, enums, literals or attrs classes of these")


def _errors_of(exc: BaseException, path: str, out: list[tuple[str, str]]) -> None:
    """Flatten a cattrs detailed-validation error into ``(path, message)`` pairs (as `transform_error`
    does, but keeping the path apart from the message and one entry per extra key)."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                sub_path = f"{path}.{note.name}" if path else note.name
            else:
                sub_path = f"{path}[{note.index!r}]"
            _errors_of(sub, sub_path, out)
        for sub in without:
            _errors_of(sub, path, out)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            out.append((f"{path}.{key}" if path else key,
                        f"unexpected field ({exc.cl.__name__} has no field {key!r})"))
    elif isinstance(exc, KeyError):
        out.append((path, "required field missing"))
    elif isinstance(exc, _Mismatch):
        out.append((path, str(exc)))
    elif isinstance(exc, (ValueError, TypeError)):
        out.append((path, str(exc)))  # an attrs validator of the class: its message names the field
    else:
        out.append((path, f"{type(exc).__name__}: {exc}"))


# -- the schema ------------------------------------------------------------------------------------
def _frozen_migrations(value: Mapping[int, Migration] | None) -> immutables.Map[int, Migration]:
    return immutables.Map(value or {})


@attrs.frozen(eq=True)
class Schema:
    """An attrs class bound to contexts, with a version and the migrations that lead to it.

    Build one with `Schema.of`. Immutable and thread-safe: every method may run in any thread (the
    context actors call `validate` on their own threads); none blocks or does I/O.

    Attributes:
        cls: the attrs class; its fields are the context's top-level keys.
        version: the current schema version (>= 1), stored with the context (`marker`).
        name: the name stored with the context; a stored name that differs means another schema.
        migrations: "from version N" -> a function turning the data of version N into that of N+1.
    """

    cls: type
    version: int = 1
    name: str = ""
    migrations: immutables.Map[int, Migration] = attrs.field(factory=immutables.Map, converter=_frozen_migrations)
    _converter: cattrs.Converter = attrs.field(init=False, eq=False, repr=False)
    _structure_hook: Callable[[Any, Any], Any] = attrs.field(init=False, eq=False, repr=False)
    _unstructure_hook: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False)

    @classmethod
    def of(cls, schema_cls: type, *, version: int = 1, migrations: Mapping[int, Migration] | None = None,
           name: str | None = None) -> Schema:
        """A schema for the attrs class `schema_cls`.

        Args:
            schema_cls: an attrs class (``@attrs.define`` / ``@attrs.frozen``), whose field types are
                JSON-shaped (see the module docstring).
            version: the schema version of data written from now on (>= 1).
            migrations: ``{N: fn}`` where ``fn(data_of_version_N) -> data_of_version_N_plus_1`` for
                every N from the oldest version still stored up to ``version - 1``.
            name: the stable name stored with each context (e.g. ``"customer"``); give one always.
                It defaults to ``"module.QualName"``, which changes when the class moves or is
                renamed (a class in ``__main__`` warns: `SchemaNameWarning`).

        Raises:
            ConfigError: not an attrs class, a field type without JSON form, a version below 1, or a
                migration key outside ``1 .. version - 1`` or not callable.

        Builds the structure hook once (a few ms of code generation); reuse the returned schema.
        """
        return cls(schema_cls, version, name if name is not None else "", migrations)

    def __attrs_post_init__(self) -> None:
        c = self.cls
        if not (isinstance(c, type) and attrs.has(c)):
            raise ConfigError(f"a schema must be an attrs class, not {c!r}")
        if type(self.version) is not int or self.version < 1:
            raise ConfigError(f"schema version must be an int >= 1, not {self.version!r}")
        for step, fn in self.migrations.items():
            if type(step) is not int or not 1 <= step < self.version:
                raise ConfigError(f"migration key {step!r} of schema {c.__qualname__} must be a version "
                                  f"from 1 to {self.version - 1} (the version it migrates from)")
            if not callable(fn):
                raise ConfigError(f"migration from version {step} of schema {c.__qualname__} is not callable")
        if type(self.name) is not str:
            raise ConfigError(f"schema name must be a str, not {self.name!r}")
        if not self.name:
            if c.__module__ == "__main__":
                warnings.warn(f"schema {c.__qualname__} is defined in __main__ and has no name=: its stored name "
                              f"'__main__.{c.__qualname__}' breaks once the class moves to a module; use "
                              f"Schema.of({c.__qualname__}, name='...')", SchemaNameWarning, stacklevel=4)
            object.__setattr__(self, "name", f"{c.__module__}.{c.__qualname__}")
        _check_type(c, c.__qualname__, set())
        conv = make_schema_converter()
        try:
            structure = conv.get_structure_hook(c)
            unstructure = conv.get_unstructure_hook(c)
        except StructureHandlerNotFoundError as exc:  # _check_type should have said it already
            raise ConfigError(f"schema {c.__qualname__}: {exc}") from exc
        object.__setattr__(self, "_converter", conv)
        object.__setattr__(self, "_structure_hook", structure)
        object.__setattr__(self, "_unstructure_hook", unstructure)

    # -- validation and typing ---------------------------------------------------------------------
    def structure(self, data: Mapping[str, Any], context_id: str | None = None) -> Any:
        """An instance of the class built from `data` (a context's data: key -> frozen JSON value).

        Lists, dicts and nested objects of the result are fresh (mutable) ones; only ``Any`` fields
        hold the stored (frozen) value itself.

        Raises:
            SchemaValidationError: listing every field that does not match.
        """
        try:
            return self._structure_hook(data, self.cls)
        except Exception as exc:
            errors: list[tuple[str, str]] = []
            if isinstance(data, Mapping):
                _errors_of(exc, "", errors)
            else:
                errors.append(("", f"expected a mapping of keys to values, got {type(data).__name__}"))
            raise SchemaValidationError(self.cls.__qualname__, errors, context_id=context_id) from exc

    def validate(self, data: Mapping[str, Any], context_id: str | None = None) -> None:
        """Check that `data` matches the schema; raise `SchemaValidationError` listing every bad field.

        `data` is the whole data of the context as it would be after the change (``FrozenDict`` /
        ``FrozenList`` values, or plain ones; an ``immutables.Map`` works too). Costs what
        `structure` costs: a few µs for a flat class of ten scalar fields.
        """
        self.structure(data, context_id)

    def unstructure(self, instance: Any) -> dict[str, Any]:
        """Plain JSON-shaped data (key -> value) of an instance of the class, to write to the context.

        attrs does not check field types when an instance is made, so the result is validated like
        any other change when it is written.

        Raises:
            TypeError: `instance` is not an instance of the schema's class.
        """
        if not isinstance(instance, self.cls):
            raise TypeError(f"expected a {self.cls.__qualname__} instance, got {type(instance).__name__}")
        return typing.cast(dict[str, Any], self._unstructure_hook(instance))

    # -- versions and migration --------------------------------------------------------------------
    def marker(self) -> dict[str, Any]:
        """What to store under `SCHEMA_KEY` in the context's metadata: ``{"name": ..., "version": N}``."""
        return {"name": self.name, "version": self.version}

    def migrate(self, data: Mapping[str, Any], from_version: int, context_id: str | None = None) -> dict[str, Any]:
        """Apply the migrations from `from_version` up to `version`, in order; return the new data.

        Each migration gets a plain, mutable deep copy (it may change it in place and return it).
        The result is neither validated nor frozen: validate it (`upgrade` does both) and write it.
        With ``from_version == version`` it is a plain copy of `data`.

        Raises:
            SchemaMigrationError: `from_version` is below 1 or above `version` (written by a newer
                schema), a step is missing (`missing` names it), or a migration raised (chained with
                ``from``) or returned something else than a mapping with str keys.
        """
        def fail(message: str, missing: int | None = None) -> SchemaMigrationError:
            return SchemaMigrationError(message, schema=self.name, from_version=from_version,
                                        to_version=self.version, context_id=context_id, missing=missing)

        if type(from_version) is not int or from_version < 1:
            raise fail(f"stored schema version {from_version!r} of {self.name} is not a version (>= 1)")
        if from_version > self.version:
            raise fail(f"data is at version {from_version} of schema {self.name}, newer than this schema's "
                       f"version {self.version}; open it with the newer code")
        missing = [v for v in range(from_version, self.version) if v not in self.migrations]
        if missing:
            raise fail(f"schema {self.name} has no migration from version {missing[0]} to {missing[0] + 1} "
                       f"(needed to go from {from_version} to {self.version}); register migrations="
                       f"{{{missing[0]}: fn}}", missing=missing[0])
        out: dict[str, Any] = thaw(data)
        for v in range(from_version, self.version):
            try:
                result = self.migrations[v](out)
            except Exception as exc:
                raise fail(f"migration of schema {self.name} from version {v} to {v + 1} raised {exc!r}; "
                           "nothing was changed") from exc
            if not isinstance(result, Mapping) or not all(type(k) is str for k in result):
                raise fail(f"migration of schema {self.name} from version {v} to {v + 1} returned "
                           f"{type(result).__name__}, not a mapping of str keys to values")
            out = dict(result)
        return out

    def upgrade(self, data: Mapping[str, Any], metadata: Mapping[str, Any],
                context_id: str | None = None) -> dict[str, Any] | None:
        """What activation does with a stored state: read its marker, migrate, validate.

        Returns None when there is nothing to migrate (no marker: the context was never bound, or
        the stored version is this one), else the migrated and validated data (plain, not frozen) to
        write in place of the stored data, with `marker()` under `SCHEMA_KEY`.

        Raises:
            SchemaMigrationError: the marker names another schema, a newer version, or a step fails.
            SchemaValidationError: the migrated data does not match the schema.
            CorruptStateError: the marker is malformed.
        """
        stored = read_marker(metadata, context_id)
        if stored is None:
            return None
        name, version = stored
        if name != self.name:
            raise SchemaMigrationError(
                f"the context is bound to schema {name!r}, not {self.name!r}; pass name={name!r} to "
                "Schema.of if the class was renamed or moved", schema=self.name, from_version=version,
                to_version=self.version, context_id=context_id)
        if version == self.version:
            return None
        migrated = self.migrate(data, version, context_id)
        self.validate(migrated, context_id)
        return migrated


def read_marker(metadata: Mapping[str, Any], context_id: str | None = None) -> tuple[str, int] | None:
    """The ``(name, version)`` stored under `SCHEMA_KEY` in a context's metadata, or None.

    Raises:
        CorruptStateError: the key holds something else than ``{"name": str, "version": int >= 1}``.
    """
    marker = metadata.get(SCHEMA_KEY)
    if marker is None:
        return None
    name = marker.get("name") if isinstance(marker, Mapping) else None
    version = marker.get("version") if isinstance(marker, Mapping) else None
    if type(name) is not str or not name or type(version) is not int or version < 1:
        raise CorruptStateError(f"metadata key {SCHEMA_KEY!r} holds {_shown(marker)}, not "
                                '{"name": str, "version": int >= 1}', context_id=context_id, what=SCHEMA_KEY)
    return name, version


def as_schema(schema: Schema | type) -> Schema:
    """`schema` itself, or ``Schema.of(schema)`` for a bare attrs class (version 1, no migrations)."""
    return schema if isinstance(schema, Schema) else Schema.of(schema)
