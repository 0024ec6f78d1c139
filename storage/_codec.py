"""Encoding of everything hoard writes: one cattrs converter, orjson, zstd, a header and a checksum.

Blob layout (all integers little-endian)::

    magic     4 bytes  b"\\x89HRD"   (the high byte catches text-mode and 7-bit damage, as in PNG)
    format    u8       FORMAT_VERSION; a reader refuses any other
    kind      u8       what the payload is (KIND_*); a reader refuses a blob of another kind
    flags     u8       bit 0: payload is zstd-compressed; bit 1: with one of the store's zstd
                       dictionaries (the frame names it by its dictionary id)
    reserved  u8       0
    length    u64      length of the payload once decompressed (bounded by the reader's limit)
    crc32     u32      zlib.crc32 of the 16 header bytes before it and of the stored payload

`decode_*` verify every field before decompressing and raise `CorruptStateError` for anything they
cannot verify: nothing is unpickled, nothing unverified is loaded. Decompression bombs are refused
without allocating their output: `length` must not exceed the reader's bound (``max_state_bytes``),
the zstd frame must declare exactly `length` bytes (we always write the content size), zstd refuses
output beyond the declared size, and trailing bytes after the frame are refused. So the most a blob
can make a reader allocate is the bound, and only for a blob that really holds that much. Decoded
models are then checked field by field (types, nesting depth), so a blob with a recomputed checksum
but hostile content is refused as well.

A payload is stored raw (flags 0) whenever compressing it does not make it smaller, so no blob is
bigger than its payload plus the header. Small payloads (`DICT_MIN` to `DICT_MAX` bytes: the typical
session-like state and every journal entry) are compressed with the store's newest zstd dictionary
when the store has one: zstd alone barely shrinks 1 KB of JSON, since it has seen none of its keys
before; a dictionary trained from the store's own blobs has (`train_dictionary`). Dictionaries are
kept in the store, versioned (their zstd dictionary id) and checksummed (framed as `KIND_DICTIONARY`
blobs); a blob names the dictionary it needs, every older one stays readable, and a blob whose
dictionary is missing is refused as `CorruptStateError`. Blobs written before dictionaries existed
are read as before.

A `Codec` holds one zstd compressor and decompressor (and one per dictionary); it is owned by one
store and used by one thread at a time (the persistence actor's, or the CLI's).
"""

from __future__ import annotations

import itertools
import operator
import struct
import typing
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import cattrs
import immutables
import orjson
import zstandard
from cattrs.fns import identity
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import CorruptStateError
from ._model import Change, ChangeFields, ContextState
from ._values import CFREEZE, MAX_DEPTH, FrozenDict, FrozenList

__all__ = [
    "FORMAT_VERSION",
    "KIND_ARCHIVE",
    "KIND_CHANGE",
    "KIND_DICTIONARY",
    "KIND_STATE",
    "Codec",
    "freeze_decoded",
    "make_converter",
    "train_dictionary",
]

MAGIC = b"\x89HRD"
FORMAT_VERSION = 1
KIND_STATE, KIND_CHANGE, KIND_ARCHIVE, KIND_DICTIONARY = 1, 2, 3, 4
_KIND_NAMES = {KIND_STATE: "state", KIND_CHANGE: "journal entry", KIND_ARCHIVE: "archive",
               KIND_DICTIONARY: "compression dictionary"}
_HEADER = struct.Struct("<4sBBBxQ")
_CRC = struct.Struct("<I")
_FRAME = struct.Struct("<4sBBBxQI")  # the header and its checksum, read in one call
HEADER_SIZE = _HEADER.size + _CRC.size
_COMPRESSED = 1
_DICTIONARY = 2
# a zstd frame as hoard's dictionary compressor writes a payload of up to `DICT_MAX` bytes: its magic,
# then a frame header descriptor (single segment, no checksum, a 4-byte dictionary id) whose size
# field takes 1 byte (payloads below 256 bytes) or 2 (stored less 256), then the dictionary id at
# bytes 5-8 and the size at 9 (see `Codec._frame_dictionary`; RFC 8878 3.1.1.1)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ONE_BYTE_SIZE, _TWO_BYTE_SIZE = 0x23, 0x63
_FRAME_HEAD_MIN = 11
COMPRESS_MIN = 256  # without a dictionary, payloads smaller than this are stored plain: zstd gains nothing
DICT_MIN = 48  # with a dictionary, payloads from this size ...
DICT_MAX = 16 * 2**10  # ... up to this one are compressed with it (larger ones carry their own context)
DICT_ID_BASE = 0x48520000  # zstd dictionary id of version n: DICT_ID_BASE + n (ids below 2**15 are reserved)
DICT_SIZE = 16 * 2**10  # bytes of a trained dictionary
DICT_MIN_SAMPLES = 64  # fewer payloads than this to learn from: no dictionary is trained


def freeze_decoded(value: Any, depth: int = 0) -> Any:
    """Freeze a value that came out of orjson.loads (so it is JSON-typed already): containers only.
    Its containers are consumed (their elements replaced by frozen ones), so pass only fresh ones.

    Values were at most `MAX_DEPTH` containers deep when they were stored; anything deeper did not
    come from hoard and raises `CorruptStateError` (it also keeps the recursion bounded).
    """
    if CFREEZE is not None:
        return CFREEZE.decoded(value, depth)  # the same walk in C
    return _freeze_decoded(value, depth)


def _freeze_decoded(value: Any, depth: int) -> Any:
    """`freeze_decoded` in Python (the C freezer's reference, and its stand-in where it was not built)."""
    t = type(value)
    if t is dict:
        return _freeze_decoded_dict(value, depth)
    if t is list:
        return _freeze_decoded_list(value, depth)
    return value


# Activation freezes every container of a snapshot (a third of its time went here): each container
# gets its nested containers replaced in place, then one C-level copy into its frozen type. Explicit
# loops, no comprehension: a comprehension is a function call per container. The builtins the loops
# test every element with come in as default arguments (never passed): a local read instead of a
# global lookup, three per element (callgrind, the bench's activation snapshot: 41.8M -> 39.3M).
def _freeze_decoded_dict(value: dict[str, Any], depth: int, _type: Any = type, _dict: Any = dict,
                         _list: Any = list) -> FrozenDict:
    if depth >= MAX_DEPTH:
        raise CorruptStateError(f"a stored value is nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    for k, v in value.items():
        t = _type(v)
        if t is _dict:
            value[k] = _freeze_decoded_dict(v, d)  # an existing key: the dict keeps its size and order
        elif t is _list:
            value[k] = _freeze_decoded_list(v, d)
    return FrozenDict(value)


def _freeze_decoded_list(value: list[Any], depth: int, _type: Any = type, _dict: Any = dict,
                         _list: Any = list) -> FrozenList:
    if depth >= MAX_DEPTH:
        raise CorruptStateError(f"a stored value is nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    i = -1
    for v in value:  # a counter, not enumerate: no (index, value) pair per element
        i += 1
        t = _type(v)
        if t is _dict:
            value[i] = _freeze_decoded_dict(v, d)
        elif t is _list:
            value[i] = _freeze_decoded_list(v, d)
    return FrozenList(value)


_CONTAINERS = frozenset({dict, list})


def _decoded_map(value: Any, _: object = None) -> immutables.Map[str, Any]:
    return immutables.Map(_owned_dict(value))  # the decoded dict is ours: its containers are frozen in place


def _decoded_dict(value: Any, _: object = None) -> Mapping[str, Any]:
    if type(value) is not dict:
        raise CorruptStateError(f"expected a JSON object, found {type(value).__name__}")
    if "" in value:
        raise CorruptStateError("a stored mapping has an empty key")
    return {k: freeze_decoded(v) if type(v) in _CONTAINERS else v for k, v in value.items()}


def _check_fields(obj: Any, ints: tuple[str, ...], floats: tuple[str, ...], strs: tuple[str, ...] = (),  # noqa: PLR0917 - a row's columns, in the table's order
                  str_tuples: tuple[str, ...] = (), bools: tuple[str, ...] = ()) -> None:
    """Refuse decoded JSON whose scalar fields are not exactly the types we write (cattrs would coerce
    "7" into 7 or a string into a tuple of characters)."""
    if type(obj) is not dict:
        raise CorruptStateError(f"expected a JSON object, found {type(obj).__name__}")
    for name in ints:
        v = obj.get(name)
        if type(v) is not int or v < 1:
            raise CorruptStateError(f"field {name!r} is {v!r}, not a positive integer")
    for name in floats:
        v = obj.get(name)
        if type(v) not in (int, float):
            raise CorruptStateError(f"field {name!r} is {type(v).__name__}, not a number")
    for name in strs:
        v = obj.get(name)
        if type(v) is not str or not v:
            raise CorruptStateError(f"field {name!r} is {type(v).__name__}, not a non-empty str")
    for name in str_tuples:
        v = obj.get(name, [])
        if type(v) is not list or any(type(k) is not str or not k for k in v):
            raise CorruptStateError(f"field {name!r} is not a list of keys")
    for name in bools:
        v = obj.get(name, False)
        if type(v) is not bool:
            raise CorruptStateError(f"field {name!r} is {type(v).__name__}, not a bool")


def _requests(record: Any, what: str) -> immutables.Map[str, tuple[int, float]]:
    """The idempotency record of a decoded state, as ``id -> (version, at)`` tuples (as the live one)."""
    out = {}
    for rid, entry in record.items():
        if (type(entry) not in (list, FrozenList) or len(entry) != 2 or type(entry[0]) is not int
                or type(entry[1]) not in (int, float)):
            raise CorruptStateError(f"{what or 'state'}: request record {rid!r} is {entry!r}, not [version, at]",
                                    what=what)
        out[rid] = (entry[0], float(entry[1]))
    return immutables.Map(out)


_ABSENT = object()


def _keys(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    """Field `name` of a decoded change: a list of non-empty keys (absent: none)."""
    v = obj.get(name, _ABSENT)
    if v is _ABSENT:
        return ()
    if type(v) is list:
        if not v:
            return ()
        for k in v:
            if type(k) is not str or not k:
                break
        else:
            return tuple(v)
    raise CorruptStateError(f"field {name!r} is not a list of keys")


_NO_CHANGES = typing.cast("Mapping[str, Any]", attrs.fields(Change).data_set.default)  # the model's shared default


def _change_of(obj: Any) -> Change:
    """The `Change` a decoded journal entry holds, every field checked to be exactly what we write.

    The hand-written equal of the converter's structure hook plus `_check_fields` (the feed, history
    and `state_at` decode one change per entry: this is ~3x faster than the cattrs hook and the
    separate field check it replaces, 2.3 against 6.6 us per bench entry). The checks are the same:
    a missing optional field takes its default, any field of another type (a "7" for 7, a string for
    a key list, 1 for true), an empty key, or a value nested deeper than `MAX_DEPTH` raises
    `CorruptStateError`; unknown fields are ignored (a newer writer may add some).
    """
    version, at, data_del, meta_del, forget, replace, rid, by = _change_scalars(obj)
    data_set = _owned_dict(obj["data_set"]) if "data_set" in obj else _NO_CHANGES
    meta_set = _owned_dict(obj["meta_set"]) if "meta_set" in obj else _NO_CHANGES
    return Change(version, at, data_set, data_del, meta_set, meta_del, replace, rid, forget, by)


#: a journal entry's fields as decoded (`Codec.plain_change_fields`), in `ChangeFields`' order
PlainFields = tuple[int, float, dict[str, Any], list[str], dict[str, Any], list[str], bool, str | None, list[str],
                    str | None]
_Scalars = tuple[int, float, tuple[str, ...], tuple[str, ...], tuple[str, ...], bool, str | None, str | None]


def _change_scalars(obj: Any) -> _Scalars:
    """Every field of a decoded journal entry but its two maps, checked as `_change_of` documents."""
    if type(obj) is not dict:
        raise CorruptStateError(f"expected a JSON object, found {type(obj).__name__}")
    get = obj.get
    version = get("version")
    if type(version) is not int or version < 1:
        raise CorruptStateError(f"field 'version' is {version!r}, not a positive integer")
    at = get("at")
    if type(at) is not float:
        if type(at) is not int:
            raise CorruptStateError(f"field 'at' is {type(at).__name__}, not a number")
        at = float(at)
    data_del, meta_del, forget = _keys(obj, "data_del"), _keys(obj, "meta_del"), _keys(obj, "forget")
    replace = get("replace", False)
    if type(replace) is not bool:
        raise CorruptStateError(f"field 'replace' is {type(replace).__name__}, not a bool")
    rid = get("request_id")
    if rid is not None and (type(rid) is not str or not rid):
        raise CorruptStateError(f"field 'request_id' is {rid!r}, not a str")
    by = get("by")
    if by is not None and type(by) is not str:
        raise CorruptStateError(f"field 'by' is {by!r}, not a str")
    return version, at, data_del, meta_del, forget, replace, rid, by


#: a decoded journal entry's ten fields in `ChangeFields`' order, in one call. Its keys are the very str
#: objects orjson hands out for them (it keeps one per short key it decodes, in a cache of its own), so
#: each lookup finds its key by identity instead of comparing the strings: 2.0k instead of 4.1k
#: instructions the ten lookups (callgrind). Were orjson to stop keeping them, the lookups would
#: compare the strings again: slower, never wrong.
_change_items = operator.itemgetter(*orjson.loads(orjson.dumps(dict.fromkeys(
    ("version", "at", "data_set", "data_del", "meta_set", "meta_del", "replace", "request_id", "forget", "by")))))


def _check_depth(value: Any, depth: int) -> None:
    """Refuse a decoded value nested deeper than `MAX_DEPTH` (what freezing checks), without copying it."""
    if depth >= MAX_DEPTH:
        raise CorruptStateError(f"a stored value is nested deeper than {MAX_DEPTH} levels")
    for v in value.values() if type(value) is dict else value:
        if type(v) in _CONTAINERS:
            _check_depth(v, depth + 1)


def _plain_map(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """Field `name` of a decoded change as the decoded dict itself (not frozen), checked like
    `_decoded_dict` and `freeze_decoded` check it (absent: a new empty dict)."""
    value = obj.get(name, _ABSENT)
    if value is _ABSENT:
        return {}
    if type(value) is not dict:
        raise CorruptStateError(f"field {name!r}: expected a JSON object, found {type(value).__name__}")
    if "" in value:
        raise CorruptStateError("a stored mapping has an empty key")
    for v in value.values():
        if type(v) in _CONTAINERS:
            _check_depth(v, 0)
    return value


def _plain_ok(value: dict[str, Any]) -> bool:
    """Whether a decoded map passes `_plain_map`'s checks (no empty key, values not nested deeper
    than `MAX_DEPTH`), without raising."""
    if "" in value:
        return False
    try:
        for v in value.values():
            if type(v) in _CONTAINERS:
                _check_depth(v, 0)
    except CorruptStateError:
        return False
    return True


def _owned_dict(value: Any) -> Mapping[str, Any]:
    """`_decoded_dict` for a dict this module just decoded (nobody else holds it): its containers are
    frozen in place instead of copying it (the feed, history and `state_at` decode one per change)."""
    if type(value) is not dict:
        raise CorruptStateError(f"expected a JSON object, found {type(value).__name__}")
    if "" in value:
        raise CorruptStateError("a stored mapping has an empty key")
    if CFREEZE is not None:
        owned: dict[str, Any] = CFREEZE.owned(value)  # the same walk in C
        return owned
    return _freeze_owned(value)


def _freeze_owned(value: dict[str, Any], _type: Any = type, _dict: Any = dict, _list: Any = list) -> dict[str, Any]:
    """`_owned_dict`'s freeze in Python: each container value of `value` replaced in place by its frozen
    copy (the C freezer's reference, and its stand-in where it was not built). (The defaults are never
    passed: see `_freeze_decoded_dict`.)"""
    # `_freeze_decoded_dict` and `_freeze_decoded_list` of each value, their first level inlined: no
    # call for a value whose elements hold no container (most of them), which a snapshot of 10k such
    # values pays 10k times (callgrind, the bench's activation snapshot: 44.4M -> 41.5M)
    for k, v in value.items():
        t = _type(v)
        if t is _dict:
            for kk, vv in v.items():
                t = _type(vv)
                if t is _dict:
                    v[kk] = _freeze_decoded_dict(vv, 1)  # an existing key: the dict keeps its size and order
                elif t is _list:
                    v[kk] = _freeze_decoded_list(vv, 1)
            value[k] = FrozenDict(v)
        elif t is _list:
            i = -1
            for vv in v:
                i += 1
                t = _type(vv)
                if t is _dict:
                    v[i] = _freeze_decoded_dict(vv, 1)
                elif t is _list:
                    v[i] = _freeze_decoded_list(vv, 1)
            value[k] = FrozenList(v)
    return value


def _origin(t: Any) -> Any:
    return typing.get_origin(t) or t


def make_converter() -> cattrs.Converter:
    """The project converter for every model that reaches disk or crosses a process boundary.

    `data` and `metadata` are already JSON-shaped, so they get pass-through hooks: cattrs never walks
    them key by key (that costs ~20x plain JSON encoding on 1,000 keys).
    """
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_unstructure_hook_func(lambda t: _origin(t) is immutables.Map, dict)
    conv.register_structure_hook_func(lambda t: _origin(t) is immutables.Map, _decoded_map)
    conv.register_unstructure_hook_func(lambda t: _origin(t) is Mapping, lambda m: m)
    conv.register_structure_hook_func(lambda t: _origin(t) is Mapping, _decoded_dict)
    return conv


class Compressor(Protocol):
    """What `Codec` compresses with (zstandard's ``ZstdCompressor`` has this shape)."""

    def compress(self, data: bytes, /) -> bytes: ...


class Codec:
    """Encodes and verifies blobs. Not thread-safe: one owner thread at a time.

    Args:
        compression_level: zstd level for payloads of `COMPRESS_MIN` bytes or more (1-22; 3 is the
            measured best trade-off here).
        max_bytes: the largest payload a reader accepts once decompressed (``max_state_bytes`` plus
            headroom for field names); larger claims are refused before decompressing.
        compressor: what compresses payloads (anything with zstd's ``compress(bytes) -> bytes``;
            default a ``zstandard.ZstdCompressor`` at `compression_level`); a test may hand in one
            that fails.
    """

    def __init__(self, compression_level: int = 3, max_bytes: int = 256 * 2**20, *,
                 compressor: Compressor | None = None) -> None:
        self.converter = make_converter()
        self.bytes_in = 0  # payload bytes framed (before compression), for metrics
        self.bytes_out = 0  # blob bytes framed (after compression, with headers)
        self.max_bytes = max_bytes
        self.level = compression_level
        self._cctx = compressor or zstandard.ZstdCompressor(level=compression_level)
        self._dctx = zstandard.ZstdDecompressor()
        #: zstd dictionary id -> decompressor, for every dictionary of the store (read side)
        self._dicts: dict[int, zstandard.ZstdDecompressor] = {}
        #: the same decompressors keyed by the 4 bytes a zstd frame names its dictionary with
        #: (`_frame_dictionary`: a slice and a lookup instead of parsing the frame header)
        self._dicts_by_field: dict[bytes, zstandard.ZstdDecompressor] = {}
        #: the newest dictionary's id and compressor (write side); None: no dictionary
        self.dictionary_id: int | None = None
        self._dict_cctx: Any = None
        #: set by the store: called with a dictionary id this codec lacks (one trained by another
        #: connection since it loaded them); returns whether it added it
        self.on_missing_dictionary: Callable[[int], bool] | None = None
        self._unstructure_state = self.converter.get_unstructure_hook(ContextState)
        self._structure_state = self.converter.get_structure_hook(ContextState)
        # a journal entry's fields go to orjson as they are (it writes a tuple as the list cattrs would
        # make of it, and `data_set`/`meta_set` are JSON-shaped already): a dict of the attributes, no
        # hook call per field (7 calls a change; 0.61 -> 0.26 us, timeit). Same JSON, same blobs.
        as_is = override(unstruct_hook=identity)
        self._unstructure_change = make_dict_unstructure_fn(
            Change, self.converter, data_set=as_is, data_del=as_is, meta_set=as_is, meta_del=as_is,
            request_id=as_is, forget=as_is, by=as_is)

    # -- framing -------------------------------------------------------------------------------------
    def add_dictionary(self, dict_id: int, content: bytes, *, newest: bool = False) -> None:
        """Make the zstd dictionary `dict_id` (raw `content`, as trained) readable; with `newest`,
        also compress small payloads with it from now on. `CorruptStateError` if `content` is not
        a zstd dictionary with that id."""
        try:
            d = zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_FULLDICT)
            if d.dict_id() != dict_id:
                raise CorruptStateError(f"compression dictionary {dict_id}: its content has id {d.dict_id()}")
            dctx = self._dicts[dict_id] = zstandard.ZstdDecompressor(dict_data=d)
            if 2**16 <= dict_id < 2**32:  # an id zstd writes in a 4-byte field (every hoard dictionary's)
                self._dicts_by_field[dict_id.to_bytes(4, "little")] = dctx
            if newest:
                self._dict_cctx = zstandard.ZstdCompressor(level=self.level, dict_data=d)
                self.dictionary_id = dict_id
        except zstandard.ZstdError as exc:
            raise CorruptStateError(f"compression dictionary {dict_id}: not a zstd dictionary ({exc})") from exc

    def frame(self, kind: int, payload: bytes) -> bytes:
        """Wrap `payload` in a header, compressed when that makes it smaller (see the module docstring)."""
        flags = 0
        stored = payload
        n = len(payload)
        if self._dict_cctx is not None and DICT_MIN <= n <= DICT_MAX and kind != KIND_DICTIONARY:
            packed = self._dict_cctx.compress(payload)
            if len(packed) < n:
                stored, flags = packed, _COMPRESSED | _DICTIONARY
        elif n >= COMPRESS_MIN:
            packed = self._cctx.compress(payload)
            if len(packed) < n:
                stored, flags = packed, _COMPRESSED
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, flags, n)
        self.bytes_in += n  # metrics: what was encoded, before and after compression
        self.bytes_out += HEADER_SIZE + len(stored)
        return head + _CRC.pack(zlib.crc32(stored, zlib.crc32(head))) + stored

    def unframe(self, kind: int, blob: bytes, what: str = "") -> bytes:
        """Verify a blob of `kind` and return its payload; raise `CorruptStateError` if anything is off."""
        # The common case first, every check of `_unframe` in one expression (the feed, history,
        # state_at and activation unframe one blob per journal entry); anything else, and every
        # error, takes `_unframe`, which checks again and names what is wrong.
        if type(blob) is bytes and len(blob) >= HEADER_SIZE:
            magic, fmt, got_kind, flags, length, crc = _FRAME.unpack_from(blob)
            stored = blob[HEADER_SIZE:]  # sliced once: checksummed, then returned or decompressed
            if (magic == MAGIC and fmt == FORMAT_VERSION and got_kind == kind and length <= self.max_bytes
                    and zlib.crc32(stored, zlib.crc32(blob[: _HEADER.size])) == crc):
                if flags == 0 and len(stored) == length:
                    return stored
                if flags == _COMPRESSED | _DICTIONARY:
                    dctx = self._frame_dictionary(stored, length)
                    if dctx is not None:
                        # the frame declares `length` (checked): zstd allocates that, refuses more
                        try:
                            payload = dctx.decompress(stored, length, False, False)  # positional: see _inflate
                        except zstandard.ZstdError:
                            payload = None
                        if payload is not None and len(payload) == length:
                            return payload
                        return self._unframe(kind, blob, what)  # names what is wrong
                if flags & _COMPRESSED and not flags & ~(_COMPRESSED | _DICTIONARY) and length:
                    label = what or _KIND_NAMES[kind]
                    dctx = self._dictionary(stored, label, what) if flags & _DICTIONARY else self._dctx
                    return self._inflate(dctx, stored, length, label, what)
        return self._unframe(kind, blob, what)

    def _unframe(self, kind: int, blob: bytes, what: str = "") -> bytes:
        name = _KIND_NAMES.get(kind, "blob")
        label = what or name
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise CorruptStateError(f"{label}: not binary data ({type(blob).__name__})", what=what)
        blob = bytes(blob)
        if len(blob) < HEADER_SIZE:
            raise CorruptStateError(f"{label}: truncated ({len(blob)} bytes, header needs {HEADER_SIZE})", what=what)
        magic, fmt, got_kind, flags, length = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise CorruptStateError(f"{label}: not a hoard blob (bad magic {magic!r})", what=what)
        if fmt != FORMAT_VERSION:
            newer = " (written by a newer hoard?)" if fmt > FORMAT_VERSION else ""
            raise CorruptStateError(f"{label}: unknown format version {fmt}{newer}; this hoard reads "
                                    f"version {FORMAT_VERSION}", what=what)
        if got_kind != kind:
            raise CorruptStateError(f"{label}: holds a {_KIND_NAMES.get(got_kind, got_kind)!s}, "
                                    f"not a {name}", what=what)
        (crc,) = _CRC.unpack_from(blob, _HEADER.size)
        stored = blob[HEADER_SIZE:]
        if zlib.crc32(stored, zlib.crc32(blob[: _HEADER.size])) != crc:
            raise CorruptStateError(f"{label}: checksum mismatch (damaged data)", what=what)
        if length > self.max_bytes:
            raise CorruptStateError(f"{label}: claims {length} bytes decompressed, over the limit of "
                                    f"{self.max_bytes} (max_state_bytes)", what=what)
        if flags & ~(_COMPRESSED | _DICTIONARY) or flags == _DICTIONARY:
            raise CorruptStateError(f"{label}: unknown flags {flags:#x}", what=what)
        if not flags & _COMPRESSED:
            if len(stored) != length:
                raise CorruptStateError(f"{label}: length mismatch", what=what)
            return stored
        if not length:
            # hoard never compresses an empty payload; asking zstd about such a frame (a skippable
            # one) had it allocate the size that frame names, up to 4 GiB, before failing
            raise CorruptStateError(f"{label}: compressed, but declares an empty payload", what=what)
        dctx = self._dictionary(stored, label, what) if flags & _DICTIONARY else self._dctx
        return self._inflate(dctx, stored, length, label, what)

    def _frame_dictionary(self, stored: bytes, length: int) -> zstandard.ZstdDecompressor | None:
        """The decompressor of a dictionary-compressed payload as hoard writes it: a zstd frame of one
        segment naming its dictionary in 4 bytes and declaring exactly `length` bytes (1 or 2 bytes of
        size: what every payload up to `DICT_MAX` gets). None for any other frame, or a dictionary this
        codec lacks (the caller then takes `_dictionary` and `_inflate`, which read the frame's
        parameters through zstd: ~2.6k instructions an entry more, callgrind)."""
        if len(stored) < _FRAME_HEAD_MIN or stored[:4] != _ZSTD_MAGIC or not length:
            return None
        descriptor = stored[4]  # single segment, no checksum, 4-byte dictionary id, then the size
        if descriptor == _ONE_BYTE_SIZE:
            declared = stored[9]
        elif descriptor == _TWO_BYTE_SIZE:
            declared = (stored[9] | stored[10] << 8) + 256  # zstd stores a 2-byte size less 256
        else:
            return None
        return self._dicts_by_field.get(stored[5:9]) if declared == length else None

    def _dictionary(self, stored: bytes, label: str, what: str) -> zstandard.ZstdDecompressor:
        """The decompressor of the dictionary a compressed payload names; `CorruptStateError` if
        the store does not hold it."""
        try:
            dict_id = zstandard.get_frame_parameters(stored).dict_id
        except (zstandard.ZstdError, ValueError) as exc:
            raise CorruptStateError(f"{label}: cannot decompress ({exc})", what=what) from exc
        found = self._dicts.get(dict_id)
        if found is None and self.on_missing_dictionary is not None and self.on_missing_dictionary(dict_id):
            found = self._dicts.get(dict_id)
        if found is None:
            raise CorruptStateError(f"{label}: needs compression dictionary {dict_id}, which this store "
                                    "does not hold", what=what)
        return found

    @staticmethod
    def _inflate(dctx: zstandard.ZstdDecompressor, stored: bytes, length: int, label: str, what: str) -> bytes:
        """The decompressed payload of a verified blob whose header says `length` bytes."""
        try:
            # the frame must declare exactly `length` (hoard always writes the content size): zstd
            # then allocates `length` bytes at most and refuses a frame that would produce more
            declared = zstandard.frame_content_size(stored)
            if declared != length:
                shown = "no size" if declared < 0 else f"{declared} bytes"  # -1: the frame does not say
                raise CorruptStateError(f"{label}: compressed frame declares {shown}, header says {length}",
                                        what=what)
            # positional, not keywords: zstandard parses keywords by name on every call (~2.8k of the
            # ~7.9k instructions a small payload's decompress costs, callgrind)
            # (data, max_output_size, read_across_frames, allow_extra_data)
            payload = dctx.decompress(stored, max(length, 1), False, False)
        except (zstandard.ZstdError, ValueError) as exc:
            raise CorruptStateError(f"{label}: cannot decompress ({exc})", what=what) from exc
        if len(payload) != length:
            raise CorruptStateError(f"{label}: decompressed to {len(payload)} bytes, header says {length}",
                                    what=what)
        return payload

    def _loads(self, payload: bytes, label: str) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise CorruptStateError(f"{label}: undecodable JSON ({exc})", what=label) from exc

    # -- models --------------------------------------------------------------------------------------
    def encode_state(self, state: ContextState) -> bytes:
        return self.frame(KIND_STATE, orjson.dumps(self._unstructure_state(state)))

    def decode_state(self, blob: bytes, what: str = "") -> ContextState:
        """Verify and decode a state blob; `CorruptStateError` (naming `what`) for anything else."""
        obj = self._loads(self.unframe(KIND_STATE, blob, what), what)
        self._checked(obj, what, ("version",), ("created_at", "updated_at"), ("id",))
        state: ContextState = self._structure(self._structure_state, obj, ContextState, what)
        if state.requests:
            state = attrs.evolve(state, requests=_requests(state.requests, what))
        return state

    def encode_change(self, change: Change, *, deleted: bool = False) -> bytes:
        """A journal entry's blob; `deleted` marks a change feed entry that records the context's
        deletion (an extra key, which `decode_change` ignores: see `hoard.storage._feed`)."""
        obj = self._unstructure_change(change)
        if deleted:
            obj["deleted"] = True
        return self.frame(KIND_CHANGE, orjson.dumps(obj))

    def decode_change(self, blob: bytes, what: str = "") -> Change:
        """Verify and decode a journal entry; `CorruptStateError` (naming `what`) for anything else."""
        obj = self._loads(self.unframe(KIND_CHANGE, blob, what), what)
        try:
            return _change_of(obj)
        except CorruptStateError as exc:
            raise CorruptStateError(f"{what or 'journal entry'}: {exc}", what=what) from None

    def change_fields(self, blob: bytes, version: int | None = None) -> ChangeFields | None:
        """`decode_change`'s fast path for journal replay (activation, `state_at`) and the feed: the
        fields of an entry holding `version` (None: any) as `apply_fields` reads them, without
        building a `Change`; its maps' containers are frozen in place. Only for an entry exactly as
        this hoard writes it: every field present with its exact type; None for anything else, valid
        or not (the caller then takes `decode_change`, which decodes it or names what is wrong)."""
        fields = self._exact_fields(blob, version)
        if fields is None:
            return None
        data_set, meta_set = fields[2], fields[4]
        try:
            if data_set:
                _owned_dict(data_set)
            if meta_set:
                _owned_dict(meta_set)
        except CorruptStateError:
            return None
        return fields

    def plain_change_fields(self, blob: bytes) -> PlainFields | None:
        """`change_fields` with the maps left as the plain decoded dicts and the key lists as the
        decoded lists (checked as `decode_change_parts` checks them, not frozen: for reading or
        re-encoding only, never to keep). None for anything `change_fields` refuses, or a map
        `decode_change_parts` would refuse (the caller then takes it, which names what is wrong)."""
        fields = self._exact_fields(blob, None)
        if fields is None:
            return None
        data_set, meta_set = fields[2], fields[4]
        if (data_set and not _plain_ok(data_set)) or (meta_set and not _plain_ok(meta_set)):
            return None
        return fields

    def _exact_fields(self, blob: bytes, version: int | None) -> PlainFields | None:
        """The decoded fields of a journal entry exactly as this hoard writes it (every field present
        with its exact type, keys non-empty str), its maps not yet checked; None for anything else."""
        try:
            obj = orjson.loads(self.unframe(KIND_CHANGE, blob))
        except (CorruptStateError, orjson.JSONDecodeError):
            return None
        if type(obj) is not dict:
            return None
        try:  # lookups, not ten `get` calls: an entry as written has every field (callgrind, 1,000
            # entries with their unframe and parse: 28.4M -> 27.2M); one missing is not exact
            v, at, data_set, data_del, meta_set, meta_del, replace, rid, forget, by = _change_items(obj)
        except KeyError:
            return None
        if (type(v) is not int or (version is not None and v != version) or v < 1 or type(at) is not float
                or type(data_set) is not dict or type(meta_set) is not dict or type(data_del) is not list
                or type(meta_del) is not list or type(forget) is not list or type(replace) is not bool
                or (rid is not None and (type(rid) is not str or not rid)) or (by is not None and type(by) is not str)
                or ((data_del or meta_del or forget)
                    and not all(type(k) is str and k for k in itertools.chain(data_del, meta_del, forget)))):
            return None
        return v, at, data_set, data_del, meta_set, meta_del, replace, rid, forget, by

    def decode_change_parts(self, blob: bytes, what: str = "") -> tuple[_Scalars, dict[str, Any], dict[str, Any]]:
        """Verify a journal entry exactly as `decode_change` does, without building the `Change`:
        ``((version, at, data_del, meta_del, forget, replace, request_id, by), data_set, meta_set)``,
        the two maps as the plain decoded dicts (not frozen: for reading or re-encoding only). ~3x
        cheaper than `decode_change` for a reader that only re-encodes (the broker relay)."""
        obj = self._loads(self.unframe(KIND_CHANGE, blob, what), what)
        try:
            return _change_scalars(obj), _plain_map(obj, "data_set"), _plain_map(obj, "meta_set")
        except CorruptStateError as exc:
            raise CorruptStateError(f"{what or 'journal entry'}: {exc}", what=what) from None

    @staticmethod
    def _checked(obj: Any, what: str, *fields: Any) -> None:
        try:
            _check_fields(obj, *fields)
        except CorruptStateError as exc:
            raise CorruptStateError(f"{what or 'blob'}: {exc}", what=what) from None

    def encode_json(self, kind: int, obj: Any) -> bytes:
        return self.frame(kind, orjson.dumps(obj))

    def decode_json(self, kind: int, blob: bytes, what: str = "") -> Any:
        return self._loads(self.unframe(kind, blob, what), what)

    @staticmethod
    def _structure(hook: Any, obj: Any, cls: type, what: str) -> Any:
        try:
            return hook(obj, cls)
        except CorruptStateError as exc:
            raise CorruptStateError(f"{what or cls.__name__}: {exc}", what=what) from None
        except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError,
                RecursionError) as exc:
            raise CorruptStateError(f"{what or cls.__name__}: does not hold a valid {cls.__name__} ({exc})",
                                    what=what) from exc


def train_dictionary(samples: list[bytes], version: int, level: int = 3) -> bytes | None:
    """A zstd dictionary of about `DICT_SIZE` bytes learned from `samples` (payloads of the store's
    own blobs), with dictionary id ``DICT_ID_BASE + version``; None when there are fewer than
    `DICT_MIN_SAMPLES` or zstd finds nothing to learn. Runs in the caller's thread (tens of ms)."""
    usable: list[bytes | bytearray | memoryview] = [s for s in samples if DICT_MIN <= len(s) <= DICT_MAX]
    if len(usable) < DICT_MIN_SAMPLES:
        return None
    try:
        d = zstandard.train_dictionary(DICT_SIZE, usable, dict_id=DICT_ID_BASE + version, level=level)
    except zstandard.ZstdError:
        return None
    return bytes(d.as_bytes())
