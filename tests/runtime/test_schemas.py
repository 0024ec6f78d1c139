"""Contexts bound to attrs schemas: validation of every change, typed reads, migrations on reopen."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hoard import (
    ContextTrackerFactory,
    HoardError,
    InvalidValueError,
    Schema,
    SchemaMigrationError,
    SchemaValidationError,
    open_system,
)


@attrs.frozen
class Address:
    city: str
    zip: str


@attrs.frozen
class Customer:
    name: str
    age: int
    address: Address
    tags: list[str] = attrs.Factory(list)


GOOD = {"name": "ana", "age": 31, "address": {"city": "Porto", "zip": "4000"}, "tags": ["vip"]}


def test_every_change_is_validated_listing_every_bad_field(system) -> None:
    t = system.adapter.create_and_activate("c1", GOOD, schema=Customer)
    assert t.typed() == Customer("ana", 31, Address("Porto", "4000"), ["vip"])
    before = t.state()
    with pytest.raises(SchemaValidationError) as info:
        t.update({"age": "old", "address": {"city": 5}, "extra": 1})
    fields = {path for path, _msg in info.value.errors}
    assert {"age", "address.city", "address.zip", "extra"} <= fields
    assert info.value.context_id == "c1"
    assert t.state() == before  # nothing changed, not even the version
    with pytest.raises(SchemaValidationError):
        t.delete("name")
    with pytest.raises(SchemaValidationError):
        t.transact(lambda d: d.__setitem__("age", -0.5))
    assert t.set("age", 32) == before.version + 1
    assert t.typed().age == 32


def test_binding_data_that_does_not_fit_is_refused_and_leaves_it_unbound(system) -> None:
    system.manager.create("loose", {"name": "x"})
    with pytest.raises(SchemaValidationError):
        system.adapter.activate("loose", schema=Customer)
    t = system.adapter.activate("loose")  # still usable without the schema
    assert t.set("anything", 1) == 2
    with pytest.raises(HoardError):
        t.typed()


def test_the_schema_is_persisted_and_enforced_after_reopen(store_path: Path) -> None:
    with open_system(store_path) as s:
        s.adapter.create_and_activate("c", GOOD, schema=Customer)
    with open_system(store_path) as s:
        t = s.adapter.activate("c")  # the schema is not known to this new system yet
        assert t.get("name") == "ana"  # reads work
        with pytest.raises(SchemaValidationError, match="does not know"):
            t.set("age", 40)  # writes are refused rather than left unvalidated
        t = s.adapter.activate("c", schema=Customer)
        with pytest.raises(SchemaValidationError):
            t.set("age", "forty")
        assert t.set("age", 40) == 3
        s.adapter.deactivate("c")
        assert t.typed().age == 40  # re-activated by the tracker: the registered schema binds again
        with pytest.raises(SchemaValidationError):
            t.set("age", "x")


def test_another_schema_cannot_take_over_a_bound_context(system) -> None:
    @attrs.frozen
    class Other:
        name: str

    system.adapter.create_and_activate("c", GOOD, schema=Customer)
    with pytest.raises(SchemaValidationError, match="bound to schema"):
        system.adapter.activate("c", schema=Other)


def test_the_schema_marker_is_reserved(system) -> None:
    t = system.adapter.create_and_activate("c", GOOD, schema=Customer)
    with pytest.raises(InvalidValueError, match="reserved"):
        t.set_metadata("hoard:schema", {"name": "x", "version": 9})
    with pytest.raises(InvalidValueError, match="reserved"):
        t.transact(lambda d: d.metadata.pop("hoard:schema"))


def test_migrations_run_on_activation_in_order(store_path: Path) -> None:
    @attrs.frozen
    class V1:
        name: str

    @attrs.frozen
    class V3:
        first: str
        last: str
        active: bool

    def one_to_two(d):
        first, _, last = d.pop("name").partition(" ")
        return {**d, "first": first, "last": last}

    def two_to_three(d):
        return {**d, "active": True}

    with open_system(store_path) as s:
        s.adapter.create_and_activate("p", {"name": "Ada Lovelace"}, schema=Schema.of(V1, name="person"))
        version = s.manager.get_state("p").version
    migrated = Schema.of(V3, version=3, name="person", migrations={1: one_to_two, 2: two_to_three})
    with open_system(store_path) as s:
        t = s.adapter.activate("p", schema=migrated)
        assert t.typed() == V3("Ada", "Lovelace", True)
        assert t.version == version + 1  # the migration is one new version
    broken = Schema.of(V3, version=3, name="person", migrations={2: two_to_three})
    with open_system(store_path) as s:
        t = s.adapter.activate("p", schema=broken)  # already at version 3: no migration needed
        assert t.typed().first == "Ada"
    with open_system(store_path) as s:
        s.adapter.create_and_activate("q", {"name": "Grace Hopper"}, schema=Schema.of(V1, name="person"))
        with pytest.raises(SchemaMigrationError):
            s.adapter.activate("q", schema=broken)  # no step from 1 to 2
        assert s.manager.get_state("q").data["name"] == "Grace Hopper"  # untouched


class Abort(BaseException):
    """A user's own BaseException (not an Exception)."""


def _no_boom(_instance: object, _attribute: object, value: str) -> None:
    if value == "boom":
        raise Abort("validator gave up")


@attrs.frozen
class Guarded:
    name: str = attrs.field(validator=_no_boom)


def test_a_validator_raising_a_base_exception_refuses_the_write_and_stops_no_actor(system) -> None:
    # user code in the context actor: raised there, pykka would stop every actor of the process
    t = system.adapter.create_and_activate("g", {"name": "ok"}, schema=Guarded)
    before = t.state()
    with pytest.raises(Abort):
        t.set("name", "boom", timeout=5)
    with pytest.raises(Abort):
        t.transact(lambda d: d.__setitem__("name", "boom"), timeout=5)
    assert t.state() == before  # nothing changed
    assert t.set("name", "fine", timeout=5) == before.version + 1
    assert system.adapter.activate("other", timeout=5).set("k", 1, timeout=5) == 2


def test_binding_or_migrating_with_user_code_raising_a_base_exception_is_refused(store_path: Path) -> None:
    # the supervisor asks the context actor to bind: it gets our error, with the user's as its cause
    # (the BaseException itself, raised in the supervisor, would stop every actor)
    @attrs.frozen
    class V1:
        name: str

    def gives_up(_data):
        raise Abort("migration gave up")

    with open_system(store_path) as s:
        s.manager.create("loose", {"name": "boom"})
        with pytest.raises(SchemaValidationError) as invalid:
            s.adapter.activate("loose", schema=Guarded, timeout=5)
        assert isinstance(invalid.value.__cause__, Abort)
        assert s.adapter.activate("loose", timeout=5).get("name") == "boom"  # still there, unbound
        s.adapter.create_and_activate("p", {"name": "Ada"}, schema=Schema.of(V1, name="person"))
    with open_system(store_path) as s:
        with pytest.raises(SchemaMigrationError) as failed:
            s.adapter.activate("p", schema=Schema.of(V1, version=2, name="person", migrations={1: gives_up}),
                               timeout=5)
        assert isinstance(failed.value.__cause__, Abort)
        assert s.manager.get_state("p").data["name"] == "Ada"  # untouched
        assert s.adapter.activate("other", timeout=5).set("k", 1, timeout=5) == 2


def test_a_factory_binds_every_tracker_it_makes(system) -> None:
    factory = ContextTrackerFactory(system.adapter, schema=Customer)
    system.manager.create("f", GOOD)
    t = factory.create("f")
    with pytest.raises(SchemaValidationError):
        t.set("age", "x")
