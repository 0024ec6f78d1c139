"""Reading a dictionary-compressed blob without asking zstd for the frame's parameters
(`Codec._frame_dictionary`): the frame's dictionary and size come from its header bytes, so every
blob the short way reads must read exactly as the full checks (`Codec._unframe`) read it, and every
blob they refuse must still be refused by name."""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib

import orjson
import pytest
import zstandard

from hoard.storage import Change, Codec, CorruptStateError
from hoard.storage._codec import DICT_ID_BASE, FORMAT_VERSION, KIND_CHANGE, MAGIC, train_dictionary

_HEADER = struct.Struct("<4sBBBxQ")


def _payload(i: int, size: int) -> bytes:
    r = random.Random(i)  # noqa: S311 - reproducible test data
    body = {"version": i + 1, "at": 1.5, "data_set": {f"k{i % 7}": {"id": i, "tags": ["a", "b"]}},
            "data_del": [], "meta_set": {}, "meta_del": [], "replace": False, "request_id": None, "forget": [],
            "by": None, "pad": "x" * max(0, size - 160) + str(r.random())}
    return orjson.dumps(body)


def _codec(*versions: int) -> Codec:
    """A codec holding a trained dictionary for each of `versions` (the last one the newest)."""
    codec = Codec()
    for n, version in enumerate(versions):
        samples = [_payload(i * (version + 3), 60 + i % 300) for i in range(300)]
        content = train_dictionary(samples, version)
        assert content is not None
        codec.add_dictionary(DICT_ID_BASE + version, content, newest=n == len(versions) - 1)
    return codec


def _reframed(stored: bytes, length: int, flags: int = 3) -> bytes:
    """A blob around `stored` with a correct header and checksum (what a hostile writer can make)."""
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, KIND_CHANGE, flags, length)
    return head + struct.pack("<I", zlib.crc32(stored, zlib.crc32(head))) + stored


def _full_read(codec: Codec, blob: bytes) -> bytes | str:
    """What the full checks make of `blob`: its payload, or the error message."""
    try:
        return codec._unframe(KIND_CHANGE, blob, "entry 3")  # noqa: SLF001 - the reference the short way must equal
    except CorruptStateError as exc:
        return str(exc)


def _short_way(codec: Codec, blob: bytes) -> bool:
    """Whether `unframe` reads `blob` the short way (without zstd's frame parameters)."""
    return codec._frame_dictionary(blob[20:], _HEADER.unpack_from(blob)[4]) is not None  # noqa: SLF001 - which path is pinned


def _read(codec: Codec, blob: bytes) -> bytes | str:
    try:
        return codec.unframe(KIND_CHANGE, blob, "entry 3")
    except CorruptStateError as exc:
        return str(exc)


@pytest.mark.parametrize("size", [48, 100, 255, 256, 257, 1000, 5000, 16 * 2**10 - 300])
def test_a_dictionary_blob_reads_the_short_way_as_the_full_checks_read_it(size: int) -> None:
    codec = _codec(1)
    payload = _payload(size, size)
    blob = codec.encode_json(KIND_CHANGE, orjson.loads(payload))
    assert blob[6] == 3  # compressed with the dictionary
    assert _short_way(codec, blob)
    assert codec.unframe(KIND_CHANGE, blob) == _full_read(codec, blob) == orjson.dumps(orjson.loads(payload))


def test_a_blob_of_an_older_dictionary_reads_the_short_way_through_that_dictionary() -> None:
    old = _codec(1)
    blob = old.encode_json(KIND_CHANGE, orjson.loads(_payload(1, 300)))
    both = _codec(1, 2)
    assert both.dictionary_id == DICT_ID_BASE + 2
    assert _short_way(both, blob)
    assert both.unframe(KIND_CHANGE, blob) == old.unframe(KIND_CHANGE, blob)
    assert both.change_fields(blob) == old.change_fields(blob)


def _hostile_frames(codec: Codec) -> dict[str, bytes]:
    """Dictionary frames a writer of hostile blobs could make (each with a correct checksum)."""
    payload = _payload(9, 200)
    stored = codec.encode_json(KIND_CHANGE, orjson.loads(payload))[20:]
    n = len(orjson.dumps(orjson.loads(payload)))
    other = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(
        train_dictionary([_payload(i, 90 + i) for i in range(300)], 7) or b""), write_content_size=True)
    unknown_id = stored[:5] + (DICT_ID_BASE + 9).to_bytes(4, "little") + stored[9:]
    return {
        "size one more": _reframed(stored, n + 1),
        "size one less": _reframed(stored, n - 1),
        "frame size changed": _reframed(stored[:9] + bytes([(stored[9] + 1) % 256]) + stored[10:], n),
        "unknown dictionary": _reframed(unknown_id, n),
        "no dictionary id": _reframed(stored[:4] + bytes([0x20]) + stored[9:], n),
        "another dictionary's frame": _reframed(other.compress(orjson.dumps(orjson.loads(payload))), n),
        "not a zstd frame": _reframed(b"\x00" * 4 + stored[4:], n),
        "trailing bytes": _reframed(stored + b"\x00\x01", n),
        "truncated": _reframed(stored[:-3], n),
        "header only": _reframed(stored[:10], n),
        "empty": _reframed(b"", n),
        "damaged block": _reframed(stored[:12] + bytes(b ^ 0x5A for b in stored[12:]), n),
    }


@pytest.mark.parametrize("case", list(_hostile_frames(_codec(1))))
def test_a_hostile_dictionary_frame_is_refused_as_the_full_checks_refuse_it(case: str) -> None:
    codec = _codec(1)
    blob = _hostile_frames(codec)[case]
    full = _full_read(codec, blob)
    assert _read(codec, blob) == full
    if isinstance(full, str):
        assert full.startswith("entry 3: ")
        assert codec.change_fields(blob) is None  # the fast path declines it: decode_change names it
        with pytest.raises(CorruptStateError, match=r"^entry 3: "):
            codec.decode_change(blob, "entry 3")


def test_a_dictionary_with_an_id_below_4_bytes_is_read_through_zstd_s_frame_parameters() -> None:
    samples = [_payload(i, 60 + i % 300) for i in range(300)]
    content = zstandard.train_dictionary(16 * 2**10, samples, dict_id=300).as_bytes()
    codec = Codec()
    codec.add_dictionary(300, content, newest=True)
    blob = codec.encode_json(KIND_CHANGE, orjson.loads(samples[5]))
    assert blob[6] == 3
    assert not _short_way(codec, blob)  # a 2-byte id field
    assert codec.unframe(KIND_CHANGE, blob) == orjson.dumps(orjson.loads(samples[5]))


def test_change_fields_of_a_dictionary_blob_are_those_of_the_decoded_change() -> None:
    codec = _codec(1)
    change = Change(4, 1.5, {"a": {"b": [1, {"c": 2}]}, "pad": "y" * 120}, ("x",), {"m": 1}, ("n",),
                    request_id="r1", forget=("r0",), by="svc:billing")
    blob = codec.encode_change(change)
    assert blob[6] == 3
    fields = codec.change_fields(blob, 4)
    assert fields is not None
    version, at, data_set, data_del, meta_set, meta_del, replace, rid, forget, by = fields
    assert Change(version, at, data_set, tuple(data_del), meta_set, tuple(meta_del), replace, rid, tuple(forget),
                  by) == codec.decode_change(blob) == change


@pytest.mark.parametrize("flags", [1, 3], ids=["compressed", "dictionary"])
@pytest.mark.parametrize("frame", [
    struct.pack("<II", 0x184D2A50, 2**30) + bytes(16),  # a zstd skippable frame "of 1 GiB"
    zstandard.ZstdCompressor(write_content_size=True).compress(b""),  # a real, empty frame
], ids=["skippable", "empty"])
def test_a_compressed_blob_declaring_an_empty_payload_is_refused_without_allocating_for_it(
        flags: int, frame: bytes) -> None:
    # hoard never compresses an empty payload; a checksummed blob that claims one, around a skippable
    # frame, had zstd allocate the size that frame names (1 GiB here) before failing
    codec = _codec(1)
    blob = _reframed(frame, 0, flags)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStateError, match="empty payload"):
            codec.unframe(KIND_CHANGE, blob, "entry 3")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert "empty payload" in str(_full_read(codec, blob))
