"""The journal entry decoder (`Codec.decode_change`): a hand-written structure function, so every
field check the cattrs converter and `_check_fields` made is pinned here, one hostile payload each."""

from __future__ import annotations

import orjson
import pytest

from hoard.storage import Codec, CorruptStateError
from hoard.storage._codec import KIND_CHANGE, make_converter
from hoard.storage._feed import FeedEntry, feed_entry
from hoard.storage._model import Change, change_fields
from hoard.storage._values import FrozenDict, FrozenList

HOSTILE = [
    b"[]", b'"str"', b"null", b"{}", b'{"version":2}', b'{"at":0}',
    b'{"version":"2","at":0}', b'{"version":true,"at":0}', b'{"version":0,"at":0}', b'{"version":2.0,"at":0}',
    b'{"version":2,"at":"0"}', b'{"version":2,"at":true}', b'{"version":2,"at":null}',
    b'{"version":2,"at":0,"data_del":"abc"}', b'{"version":2,"at":0,"data_del":null}',
    b'{"version":2,"at":0,"data_del":[""]}', b'{"version":2,"at":0,"meta_del":[1]}',
    b'{"version":2,"at":0,"forget":{"a":1}}', b'{"version":2,"at":0,"replace":1}',
    b'{"version":2,"at":0,"replace":null}', b'{"version":2,"at":0,"request_id":""}',
    b'{"version":2,"at":0,"request_id":7}', b'{"version":2,"at":0,"by":5}',
    b'{"version":2,"at":0,"data_set":null}', b'{"version":2,"at":0,"data_set":[]}',
    b'{"version":2,"at":0,"data_set":{"":1}}', b'{"version":2,"at":0,"meta_set":"x"}',
    b'{"version":2,"at":0,"data_set":{"k":' + b"[" * 70 + b"]" * 70 + b"}}",
]


@pytest.mark.parametrize("decoder", ["decode_change", "decode_change_parts"])  # the relay's lean one too
@pytest.mark.parametrize("payload", HOSTILE, ids=[p.decode()[:40] for p in HOSTILE])
def test_a_hostile_journal_entry_is_refused_with_corrupt_state_error_naming_it(payload: bytes, decoder: str) -> None:
    codec = Codec()
    with pytest.raises(CorruptStateError, match=r"^entry 7: ") as info:
        getattr(codec, decoder)(codec.frame(KIND_CHANGE, payload), "entry 7")
    assert info.value.what == "entry 7"


def test_missing_optional_fields_take_the_model_defaults_and_unknown_fields_are_ignored() -> None:
    codec = Codec()
    change = codec.decode_change(codec.frame(KIND_CHANGE, b'{"version":3,"at":5,"future_field":[1]}'))
    assert change == Change(3, 5.0)
    assert type(change.at) is float


def test_a_full_change_decodes_to_frozen_values() -> None:
    codec = Codec()
    change = Change(4, 1.5, {"a": {"b": [1, {"c": 2}]}}, ("x",), {"m": 1}, ("n",), replace=False,
                    request_id="r1", forget=("r0",), by="svc:billing")
    back = codec.decode_change(codec.encode_change(change), "prop")
    assert back == change
    with pytest.raises(TypeError):
        back.data_set["a"]["b"].append(3)  # type: ignore[index]


def test_the_lean_decoder_gives_the_fields_the_full_one_gives() -> None:
    codec = Codec()
    change = Change(4, 1.5, {"a": {"b": [1, {"c": 2}]}}, ("x",), {"m": 1}, ("n",), replace=False,
                    request_id="r1", forget=("r0",), by="svc:billing")
    scalars, data_set, meta_set = codec.decode_change_parts(codec.encode_change(change))
    assert scalars == (4, 1.5, ("x",), ("n",), ("r0",), False, "r1", "svc:billing")
    assert (data_set, meta_set) == ({"a": {"b": [1, {"c": 2}]}}, {"m": 1})
    assert codec.decode_change_parts(codec.frame(KIND_CHANGE, b'{"version":3,"at":5}'))[1:] == ({}, {})


@pytest.mark.parametrize("payload", HOSTILE, ids=[p.decode()[:40] for p in HOSTILE])
def test_the_replay_fast_path_declines_a_hostile_entry_so_the_full_decoder_names_it(payload: bytes) -> None:
    codec = Codec()
    assert codec.change_fields(codec.frame(KIND_CHANGE, payload), 2) is None


def test_the_replay_fast_path_gives_the_fields_of_the_change_with_frozen_values() -> None:
    codec = Codec()
    change = Change(4, 1.5, {"a": {"b": [1, {"c": 2}]}}, ("x",), {"m": [1]}, ("n",), replace=False,
                    request_id="r1", forget=("r0",), by="svc:billing")
    blob = codec.encode_change(change)
    fields = codec.change_fields(blob, 4)
    assert fields is not None
    version, at, data_set, data_del, meta_set, meta_del, replace, request_id, forget, by = fields
    assert (version, at, data_set, tuple(data_del), meta_set, tuple(meta_del), replace, request_id, tuple(forget),
            by) == change_fields(codec.decode_change(blob))
    assert codec.change_fields(blob) == fields  # any version
    with pytest.raises(TypeError):
        data_set["a"]["b"].append(3)
    with pytest.raises(TypeError):
        meta_set["m"].append(3)


def test_the_replay_fast_path_declines_an_entry_of_another_version_or_in_an_older_valid_form() -> None:
    codec = Codec()
    assert codec.change_fields(codec.encode_change(Change(4, 1.5)), 5) is None  # the caller names the mismatch
    # valid, but not as this hoard writes it (an int time, absent fields): decode_change reads it
    assert codec.change_fields(codec.frame(KIND_CHANGE, b'{"version":3,"at":5}'), 3) is None



@pytest.mark.parametrize("change", [
    Change(4, 1.5, {"a": {"b": [1, {"c": 2}]}, "z": 1}, ("y", "x"), {"m": [1]}, ("n",), request_id="r1",
           forget=("r0",), by="svc:billing"),
    Change(1, 2.0, {"a": 1}),  # a creation (version 1) that is not a replace
    Change(7, 3.0, {"a": 1}, replace=True, by="user:ana"),  # a restore: through decode_change
], ids=["update", "version-1", "restore"])
def test_a_feed_entry_read_on_the_fast_path_equals_the_one_built_from_the_decoded_change(change: Change) -> None:
    codec = Codec()
    blob = codec.encode_change(change)
    entry = feed_entry(codec, 9, "ctx", blob)
    assert entry == FeedEntry.of(9, "ctx", codec.decode_change(blob))
    assert entry.changed == tuple(sorted(change.data_set)) and entry.removed == tuple(sorted(change.data_del))
    if change.version == 4:
        with pytest.raises(TypeError):
            entry.values["a"]["b"].append(3)


@pytest.mark.parametrize("change", [
    Change(2, 1.5),
    Change(9, 3.25, FrozenDict({"a": FrozenDict({"b": FrozenList([1, "x"])})}), ("gone", "old"),
           FrozenDict({"m": 1}), ("dropped",), replace=True, request_id="r-1", forget=("r-0",), by="user:ana"),
])
def test_a_journal_entry_is_written_as_the_converter_unstructures_the_change(change: Change) -> None:
    # `encode_change` hands the fields to orjson as they are (no cattrs hook per field): the JSON must
    # stay what the converter's generic hook gives (lists for the key tuples), so old and new blobs agree
    codec = Codec()
    payload = orjson.dumps(make_converter().unstructure(change))
    assert codec.encode_change(change) == Codec().frame(KIND_CHANGE, payload)
    assert codec.decode_change(codec.encode_change(change)) == change
