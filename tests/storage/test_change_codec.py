"""The journal entry decoder (`Codec.decode_change`): a hand-written structure function, so every
field check the cattrs converter and `_check_fields` made is pinned here, one hostile payload each."""

from __future__ import annotations

import pytest

from hoard.storage import Codec, CorruptStateError
from hoard.storage._codec import KIND_CHANGE
from hoard.storage._model import Change

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


@pytest.mark.parametrize("payload", HOSTILE, ids=[p.decode()[:40] for p in HOSTILE])
def test_a_hostile_journal_entry_is_refused_with_corrupt_state_error_naming_it(payload: bytes) -> None:
    codec = Codec()
    with pytest.raises(CorruptStateError, match=r"^entry 7: ") as info:
        codec.decode_change(codec.frame(KIND_CHANGE, payload), "entry 7")
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
