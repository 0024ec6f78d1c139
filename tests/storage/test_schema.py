"""Schemas: strict validation listing every bad field, typing, migrations, the stored marker."""

from __future__ import annotations

import datetime
import enum
import threading
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs
import immutables
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoard.storage import ConfigError, CorruptStateError, FrozenDict, FrozenList, HoardError, freeze_mapping

# the lead exports these from `storage`; until then the tests import the module itself
from hoard.storage._schema import (
    SCHEMA_KEY,
    Schema,
    SchemaMigrationError,
    SchemaValidationError,
    as_schema,
    read_marker,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Address:
    street: str
    zip: int


@attrs.frozen
class Profile:
    name: str
    age: int
    height: float = 0.0
    admin: bool = False
    tags: list[str] = attrs.field(factory=list)
    address: Address | None = None
    color: Color = Color.RED
    plan: Literal["free", "paid"] = "free"
    scores: dict[str, float] = attrs.field(factory=dict)
    limits: Mapping[str, int] = attrs.field(factory=dict)
    ident: int | str = 0
    pair: tuple[int, str] = (0, "")
    seen: frozenset[int] = frozenset()
    homes: list[Address] = attrs.field(factory=list)
    extra_info: Any = None


@attrs.frozen
class Node:
    name: str
    children: list[Node] = attrs.field(factory=list)


@attrs.frozen
class Checked:
    age: int = attrs.field(validator=attrs.validators.ge(0))


PROFILE = Schema.of(Profile)


def errors_of(schema: Schema, data: Any) -> list[tuple[str, str]]:
    with pytest.raises(SchemaValidationError) as info:
        schema.validate(data, "ctx")
    return info.value.errors


# -- validation lists every bad field ------------------------------------------------------------------
def test_a_change_with_many_bad_fields_lists_every_one_of_them() -> None:
    data = freeze_mapping({
        "name": 5, "age": "7", "tags": "abc", "address": {"street": 1, "zp": 3}, "color": "green",
        "plan": "gold", "scores": {"a": "x", "b": 1}, "limits": {"a": "b"}, "ident": True, "pair": [1, 2],
        "seen": [1, [2]], "homes": [{"street": "x", "zip": 1}, {"street": "y"}, 7], "typo": 1, "other": 2,
    })
    assert errors_of(PROFILE, data) == [
        ("name", "expected str, got int 5"),
        ("age", "expected int, got str '7'"),
        ("tags", "expected a list, got str 'abc'"),
        ("address.street", "expected str, got int 1"),
        ("address.zip", "required field missing"),
        ("address.zp", "unexpected field (Address has no field 'zp')"),
        ("color", "expected one of 'red', 'blue' (Color), got 'green'"),
        ("plan", "expected one of 'free', 'paid', got 'gold'"),
        ("scores['a']", "expected float, got str 'x'"),
        ("limits['a']", "expected int, got str 'b'"),
        ("ident", "expected int | str, got bool True"),
        ("pair[1]", "expected str, got int 2"),
        ("seen[1]", "expected int, got list [2]"),
        ("homes[1].zip", "required field missing"),
        ("homes[2]", "expected an object (Address), got int 7"),
        ("other", "unexpected field (Profile has no field 'other')"),
        ("typo", "unexpected field (Profile has no field 'typo')"),
    ]


def test_the_error_names_the_context_the_schema_and_every_field_in_its_message() -> None:
    with pytest.raises(SchemaValidationError) as info:
        PROFILE.validate({"name": 1, "typo": 2}, context_id="users/7")
    err = info.value
    assert isinstance(err, HoardError) and isinstance(err, ValueError)
    assert err.context_id == "users/7"
    assert err.schema == "Profile"
    assert err.errors == [("name", "expected str, got int 1"), ("age", "required field missing"),
                          ("typo", "unexpected field (Profile has no field 'typo')")]
    text = str(err)
    assert "'users/7'" in text and "Profile" in text and "3 bad fields" in text
    for path, message in err.errors:
        assert f"{path}: {message}" in text
    assert isinstance(err.__cause__, cattrs.BaseValidationError)  # the cattrs details stay reachable


def test_missing_required_fields_wrong_types_and_extra_keys_are_reported_together() -> None:
    assert errors_of(PROFILE, {"age": 1.5, "nope": None}) == [
        ("name", "required field missing"),
        ("age", "expected int, got float 1.5"),
        ("nope", "unexpected field (Profile has no field 'nope')"),
    ]


def test_extra_keys_are_refused_at_every_depth() -> None:
    assert errors_of(PROFILE, {"name": "a", "age": 1, "address": {"street": "s", "zip": 1, "city": "x"},
                               "homes": [{"street": "s", "zip": 1, "floor": 2}]}) == [
        ("address.city", "unexpected field (Address has no field 'city')"),
        ("homes[0].floor", "unexpected field (Address has no field 'floor')"),
    ]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("age", "7", "expected int, got str '7'"),            # cattrs' default converter would coerce these
    ("age", True, "expected int, got bool True"),
    ("age", 7.0, "expected int, got float 7.0"),
    ("name", 5, "expected str, got int 5"),
    ("admin", 1, "expected bool, got int 1"),
    ("height", "1.5", "expected float, got str '1.5'"),
    ("height", False, "expected float, got bool False"),
    ("tags", {"a": 1}, "expected a list, got object {'a': 1}"),
    ("scores", ["a"], "expected an object, got list ['a']"),
    ("address", "Main St", "expected Address | None, got str 'Main St'"),
    ("pair", [1], "expected a list of 2 items, got 1 items"),
    ("color", "RED", "expected one of 'red', 'blue' (Color), got 'RED'"),
])
def test_values_are_checked_strictly_as_json_types(field: str, value: Any, message: str) -> None:
    assert errors_of(PROFILE, {"name": "a", "age": 1, field: value}) == [(field, message)]


def test_an_int_is_accepted_where_the_schema_has_a_float() -> None:
    assert PROFILE.structure({"name": "a", "age": 1, "height": 2, "scores": {"x": 3}}).height == 2.0


class Level(enum.IntEnum):
    ONE = 1


@attrs.define
class Levels:
    lit: Literal[1] = 1
    level: Level = Level.ONE


def test_a_literal_or_enum_of_ints_refuses_a_bool() -> None:
    schema = Schema.of(Levels)
    assert schema.structure({"lit": 1, "level": 1}) == Levels(1, Level.ONE)
    assert errors_of(schema, {"lit": True, "level": True}) == [
        ("lit", "expected one of 1, got True"),
        ("level", "expected one of 1 (Level), got True"),
    ]


def test_frozen_values_and_immutable_maps_validate_like_plain_ones() -> None:
    plain = {"name": "a", "age": 1, "tags": ["x"], "address": {"street": "s", "zip": 1}, "scores": {"a": 1.5},
             "homes": [{"street": "t", "zip": 2}], "pair": [3, "c"], "seen": [1, 2]}
    frozen = freeze_mapping(plain)
    assert type(frozen["tags"]) is FrozenList and type(frozen["address"]) is FrozenDict
    for data in (plain, frozen, immutables.Map(frozen)):
        PROFILE.validate(data)
    assert PROFILE.structure(immutables.Map(frozen)) == PROFILE.structure(plain)


def test_data_that_is_not_a_mapping_is_one_error_about_the_whole_state() -> None:
    assert errors_of(PROFILE, ["name"]) == [("", "expected a mapping of keys to values, got list")]


def test_nested_and_recursive_classes_report_full_paths() -> None:
    tree = Schema.of(Node)
    data = {"name": "root", "children": [{"name": "a", "children": [{"name": 3}, 4]}, {"name": "b"}]}
    assert errors_of(tree, data) == [
        ("children[0].children[0].name", "expected str, got int 3"),
        ("children[0].children[1]", "expected an object (Node), got int 4"),
    ]
    tree.validate({"name": "root", "children": [{"name": "a", "children": [{"name": "b"}]}]})


def test_attrs_validators_of_the_class_run_once_types_are_right() -> None:
    schema = Schema.of(Checked)
    assert errors_of(schema, {"age": -1}) == [("", "'age' must be >= 0: -1")]
    assert errors_of(schema, {"age": "x"}) == [("age", "expected int, got str 'x'")]


# -- typed objects ---------------------------------------------------------------------------------------
def test_structure_fills_defaults_and_unstructure_gives_json_shaped_data_back() -> None:
    p = PROFILE.structure(freeze_mapping({"name": "a", "age": 3}))
    assert p == Profile("a", 3)
    full = Profile("b", 4, 1.5, True, ["t"], Address("s", 1), Color.BLUE, "paid", {"x": 1.0}, {"k": 2}, "id",
                   (1, "one"), frozenset({2}), [Address("h", 9)], {"any": [1]})
    data = PROFILE.unstructure(full)
    assert data == {
        "name": "b", "age": 4, "height": 1.5, "admin": True, "tags": ["t"], "address": {"street": "s", "zip": 1},
        "color": "blue", "plan": "paid", "scores": {"x": 1.0}, "limits": {"k": 2}, "ident": "id",
        "pair": [1, "one"], "seen": [2], "homes": [{"street": "h", "zip": 9}], "extra_info": {"any": [1]},
    }
    frozen = freeze_mapping(data)  # it is storable as it is
    PROFILE.validate(frozen)
    assert PROFILE.structure(frozen) == full


def test_unstructure_refuses_an_object_of_another_class() -> None:
    with pytest.raises(TypeError, match="expected a Profile instance"):
        PROFILE.unstructure(Address("s", 1))


@attrs.frozen
class Small:
    name: str
    count: int = 0
    ratio: float = 0.0
    flags: list[bool] = attrs.field(factory=list)
    inner: Address | None = None


_TEXT = st.text(max_size=8)
_SMALL = st.builds(Small, _TEXT, st.integers(-(2**63), 2**63 - 1),
                   st.floats(allow_nan=False, allow_infinity=False), st.lists(st.booleans(), max_size=4),
                   st.none() | st.builds(Address, _TEXT, st.integers(0, 99999)))


@settings(max_examples=60, deadline=None)
@given(_SMALL)
def test_a_typed_object_survives_unstructure_freeze_and_structure(obj: Small) -> None:
    schema = Schema.of(Small)
    assert schema.structure(freeze_mapping(schema.unstructure(obj))) == obj


# -- building a schema -----------------------------------------------------------------------------------
def test_of_names_the_schema_after_the_class_unless_told_and_is_a_value() -> None:
    assert PROFILE.name == f"{__name__}.Profile"
    assert PROFILE.version == 1 and dict(PROFILE.migrations) == {}
    named = Schema.of(Profile, name="profile", version=2, migrations={1: dict})
    assert named.name == "profile" and named.version == 2
    assert Schema.of(Profile) == PROFILE and hash(Schema.of(Profile)) == hash(PROFILE)
    assert as_schema(PROFILE) is PROFILE and as_schema(Profile) == PROFILE


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"schema_cls": dict}, "must be an attrs class"),
    ({"schema_cls": Profile, "version": 0}, "version must be an int >= 1"),
    ({"schema_cls": Profile, "version": 2, "migrations": {2: dict}}, "from 1 to 1"),
    ({"schema_cls": Profile, "version": 2, "migrations": {0: dict}}, "from 1 to 1"),
    ({"schema_cls": Profile, "version": 2, "migrations": {1: "not a function"}}, "not callable"),
    ({"schema_cls": Profile, "name": 5}, "name must be a str"),
])
def test_of_refuses_a_bad_schema_definition(kwargs: dict[str, Any], match: str) -> None:
    cls = kwargs.pop("schema_cls")
    with pytest.raises(ConfigError, match=match):
        Schema.of(cls, **kwargs)


@attrs.define
class Event:
    at: datetime.datetime


@attrs.define
class ByNumber:
    names: dict[int, str]


@attrs.define
class Outer:
    events: list[Event]


def test_of_refuses_field_types_without_a_json_form_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^Event\.at: type datetime has no JSON form"):
        Schema.of(Event)
    with pytest.raises(ConfigError, match=r"^ByNumber\.names: mapping keys must be str"):
        Schema.of(ByNumber)
    with pytest.raises(ConfigError, match=r"^Outer\.events\[\]\.at: type datetime"):
        Schema.of(Outer)


def test_of_refuses_a_class_whose_annotations_cannot_be_resolved() -> None:
    @attrs.define
    class Local:
        inner: Address  # resolvable: module level
        more: LocalOnly  # type: ignore[name-defined]  # noqa: F821 - the point of the test

    with pytest.raises(ConfigError, match=r"cannot resolve the field types of .*Local"):
        Schema.of(Local)


# -- migrations ------------------------------------------------------------------------------------------
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["calls"].append(1)
    data["full_name"] = data.pop("name")
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["calls"].append(2)
    first, _, last = data.pop("full_name").partition(" ")
    return {**data, "first": first, "last": last}


@attrs.frozen
class PersonV3:
    first: str
    last: str
    calls: list[int]


PERSON = Schema.of(PersonV3, version=3, migrations={2: _v2_to_v3, 1: _v1_to_v2})


def test_migrations_run_in_version_order_each_on_the_result_of_the_previous() -> None:
    stored = immutables.Map(freeze_mapping({"name": "Ada Lovelace", "calls": []}))
    assert PERSON.migrate(stored, 1) == {"first": "Ada", "last": "Lovelace", "calls": [1, 2]}
    assert PERSON.migrate({"full_name": "Grace Hopper", "calls": []}, 2) == {
        "first": "Grace", "last": "Hopper", "calls": [2]}
    assert stored["calls"] == []  # migrations got a mutable copy; the frozen input is untouched
    current = freeze_mapping({"first": "a", "last": "b", "calls": []})
    assert PERSON.migrate(current, 3) == current  # nothing to do: a plain copy


def test_a_missing_migration_step_names_the_version_it_starts_from() -> None:
    schema = Schema.of(PersonV3, version=3, migrations={1: _v1_to_v2})
    with pytest.raises(SchemaMigrationError) as info:
        schema.migrate({"name": "x y", "calls": []}, 1, context_id="c1")
    err = info.value
    assert err.missing == 2 and err.from_version == 1 and err.to_version == 3 and err.context_id == "c1"
    assert "no migration from version 2 to 3" in str(err) and "'c1'" in str(err)
    assert isinstance(err, HoardError)


def test_a_migration_that_raises_is_wrapped_and_chained() -> None:
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("nickname")

    schema = Schema.of(PersonV3, version=3, migrations={1: _v1_to_v2, 2: broken})
    with pytest.raises(SchemaMigrationError, match="from version 2 to 3 raised KeyError") as info:
        schema.migrate({"name": "x y", "calls": []}, 1)
    assert isinstance(info.value.__cause__, KeyError) and info.value.missing is None


def test_a_migration_that_returns_no_mapping_is_refused() -> None:
    schema = Schema.of(PersonV3, version=2, migrations={1: lambda data: None})  # type: ignore[dict-item,return-value]
    with pytest.raises(SchemaMigrationError, match="returned NoneType, not a mapping"):
        schema.migrate({}, 1)


@pytest.mark.parametrize("version", [0, 4, "1"])
def test_a_stored_version_outside_the_schema_range_is_refused(version: Any) -> None:
    with pytest.raises(SchemaMigrationError):
        PERSON.migrate({}, version)


# -- the stored marker and activation ----------------------------------------------------------------------
def test_the_marker_round_trips_through_metadata() -> None:
    metadata = freeze_mapping({SCHEMA_KEY: PERSON.marker(), "owner": "x"})
    assert PERSON.marker() == {"name": f"{__name__}.PersonV3", "version": 3}
    assert read_marker(metadata) == (f"{__name__}.PersonV3", 3)
    assert read_marker({"owner": "x"}) is None


@pytest.mark.parametrize("bad", ["v1", {"name": "x"}, {"name": "", "version": 1}, {"name": "x", "version": True},
                                 {"name": "x", "version": 0}])
def test_a_malformed_marker_is_corrupt_state(bad: Any) -> None:
    with pytest.raises(CorruptStateError, match=SCHEMA_KEY) as info:
        read_marker({SCHEMA_KEY: bad}, context_id="c")
    assert info.value.context_id == "c"


def test_upgrade_migrates_and_validates_an_older_stored_state() -> None:
    meta = {SCHEMA_KEY: {"name": PERSON.name, "version": 1}}
    assert PERSON.upgrade(freeze_mapping({"name": "Ada L", "calls": []}), meta) == {
        "first": "Ada", "last": "L", "calls": [1, 2]}
    assert PERSON.upgrade({"first": "a", "last": "b", "calls": []}, {SCHEMA_KEY: PERSON.marker()}) is None
    assert PERSON.upgrade({"anything": 1}, {}) is None  # never bound: nothing to migrate


def test_upgrade_refuses_another_schema_and_migrated_data_that_does_not_match() -> None:
    with pytest.raises(SchemaMigrationError, match="bound to schema 'other'"):
        PERSON.upgrade({}, {SCHEMA_KEY: {"name": "other", "version": 1}})
    sloppy = Schema.of(PersonV3, version=2, name=PERSON.name, migrations={1: lambda d: {**d, "first": 1}})
    with pytest.raises(SchemaValidationError) as info:
        sloppy.upgrade({"calls": []}, {SCHEMA_KEY: {"name": PERSON.name, "version": 1}}, context_id="c")
    assert info.value.errors == [("first", "expected str, got int 1"), ("last", "required field missing")]


def test_one_schema_validates_from_many_threads_at_once() -> None:
    good = freeze_mapping({"name": "a", "age": 1, "homes": [{"street": "s", "zip": 1}]})
    bad = freeze_mapping({"name": 1, "age": "x", "typo": 0})
    failures: list[list[tuple[str, str]]] = []
    unexpected: list[BaseException] = []

    def work() -> None:
        for _ in range(200):
            try:
                PROFILE.validate(good)
                PROFILE.validate(bad)
            except SchemaValidationError as exc:
                failures.append(exc.errors)
            except BaseException as exc:  # noqa: BLE001 - reported below, from the test's thread
                unexpected.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert unexpected == []
    assert failures == [[("name", "expected str, got int 1"), ("age", "expected int, got str 'x'"),
                         ("typo", "unexpected field (Profile has no field 'typo')")]] * 800
