"""Compression that pays (issue 14): a payload zstd does not shrink is stored raw; small payloads use a
zstd dictionary trained from the store's own blobs, kept versioned and checksummed in the store; every
older blob (without a dictionary, or with an older one) stays readable."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import string
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest
import zstandard

import hoard.storage._sqlite as sqlite_module
from hoard import ContextManagerConfig, open_system
from hoard.storage import Change, Codec, CorruptStateError, CreateContext, SQLiteStore, freeze_mapping, new_state
from hoard.storage._codec import DICT_ID_BASE, KIND_CHANGE, KIND_STATE, MAGIC

_HEADER = struct.Struct("<4sBBBxQ")
HEADER = _HEADER.size + 4


def session(i: int) -> dict[str, object]:
    """A web-session-like state of about 1 KB: the same keys everywhere, different values."""
    r = random.Random(i)  # noqa: S311 - reproducible test data
    return {
        "user_id": r.randint(1, 10**6), "user_name": f"user{r.randint(1, 99999)}",
        "email": f"u{r.randint(1, 99999)}@example.com", "roles": ["reader", "writer", "admin"][: r.randint(1, 3)],
        "cart": [{"sku": f"SKU-{r.randint(1000, 9999)}", "qty": r.randint(1, 5), "price": round(r.random() * 100, 2),
                  "title": r.choice(["Blue mug", "Red chair", "Green lamp", "Desk", "Notebook"])}
                 for _ in range(r.randint(5, 8))],
        "last_page": f"/products/{r.randint(1, 500)}", "locale": r.choice(["en-US", "de-DE", "fr-FR"]),
        "csrf_token": f"{r.getrandbits(128):032x}", "flags": {"beta": r.random() < 0.5, "dark_mode": r.random() < 0.5},
        "started_at": 1.7e9 + r.random() * 1e6, "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0",
    }


def _flags(blob: bytes) -> int:
    return _HEADER.unpack_from(blob)[3]


def _state(i: int):
    return new_state(f"s{i}", freeze_mapping(session(i)), now=1.7e9)


def test_a_payload_that_compression_does_not_shrink_is_stored_raw() -> None:
    codec = Codec()
    noise = random.Random(1).randbytes(3000).hex()  # noqa: S311 - test data
    payload = orjson.dumps({"blob": noise[:600]})
    blob = codec.encode_json(KIND_CHANGE, {"blob": noise[:600]})
    assert len(payload) >= 256  # it is over the size where zstd is tried at all
    if len(zstandard.ZstdCompressor(level=3).compress(payload)) >= len(payload):
        assert _flags(blob) == 0 and len(blob) == HEADER + len(payload)
    assert len(blob) <= HEADER + len(payload)
    assert codec.decode_json(KIND_CHANGE, blob) == {"blob": noise[:600]}
    # a state that zstd does shrink is still compressed
    big = codec.encode_state(_state(1))
    assert _flags(big) == 1 and len(big) < HEADER + len(orjson.dumps(codec.converter.unstructure(_state(1))))


def test_no_blob_is_bigger_than_its_payload_plus_the_header() -> None:
    codec = Codec()
    r = random.Random(2)  # noqa: S311 - reproducible test data
    raw = 0
    for n in (256, 260, 300, 400, 1000, 4000):
        payload = orjson.dumps("".join(r.choices(string.printable[:94], k=n)))
        blob = codec.frame(KIND_CHANGE, payload)
        assert len(blob) <= HEADER + len(payload)
        zstd_alone = len(zstandard.ZstdCompressor(level=3).compress(payload))
        assert (_flags(blob) == 0) == (zstd_alone >= len(payload))
        assert codec.unframe(KIND_CHANGE, blob) == payload
        raw += _flags(blob) == 0
    assert raw >= 1  # the raw path was taken (before issue 14 every one of these was compressed)


def _old_style_blob(kind: int, payload: bytes) -> bytes:
    """A blob as hoard wrote it before issue 14: compressed (flag 1) even when that made it bigger."""
    stored = zstandard.ZstdCompressor(level=3).compress(payload)
    head = _HEADER.pack(MAGIC, 1, kind, 1, len(payload))
    return head + struct.pack("<I", zlib.crc32(stored, zlib.crc32(head))) + stored


def test_blobs_written_before_dictionaries_stay_readable(tmp_path: Path) -> None:
    codec = Codec()
    state = _state(3)
    payload = orjson.dumps(codec.converter.unstructure(state))
    old = _old_style_blob(KIND_STATE, payload)
    assert codec.decode_state(old) == state
    store = SQLiteStore(tmp_path / "s.db")
    store.open()
    try:
        store.commit([CreateContext(_state(i)) for i in range(200)])
        assert store.train_dictionary() == 1
        assert store.codec.decode_state(old) == state  # a codec with dictionaries reads the old form too
    finally:
        store.close()


def test_a_trained_dictionary_is_kept_versioned_and_every_blob_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, dictionary=False)
    store.open()
    try:
        store.commit([CreateContext(_state(i)) for i in range(300)])  # written without a dictionary
        assert store.codec.dictionary_id is None
        assert store.train_dictionary() == 1
        store.commit([CreateContext(_state(i)) for i in range(300, 400)])  # with dictionary 1
        assert store.train_dictionary() == 2
        store.commit([CreateContext(_state(i)) for i in range(400, 500)])  # with dictionary 2
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert [r[0] for r in db.execute("SELECT version FROM dictionaries ORDER BY version")] == [1, 2]
        flags = {cid: _flags(blob) for cid, blob in db.execute("SELECT context_id, blob FROM snapshots")}
        ids = {cid: zstandard.get_frame_parameters(blob[HEADER:]).dict_id
               for cid, blob in db.execute("SELECT context_id, blob FROM snapshots")}
    finally:
        db.close()
    assert flags["s0"] == 1 and ids["s0"] == 0
    assert flags["s350"] == 3 and ids["s350"] == DICT_ID_BASE + 1
    assert flags["s450"] == 3 and ids["s450"] == DICT_ID_BASE + 2
    again = SQLiteStore(path, readonly=True)  # a fresh store object: it loads both dictionaries
    again.open()
    try:
        for i in (0, 299, 350, 450, 499):
            loaded = again.load(f"s{i}")
            assert loaded is not None and dict(loaded.data) == session(i)
        assert again.verify() == []
    finally:
        again.close()


def test_with_the_dictionary_1kb_sessions_shrink_at_least_twice_as_much(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", dictionary=False)
    store.open()
    try:
        store.commit([CreateContext(_state(i)) for i in range(500)])
        plain = [store.codec.encode_state(_state(i)) for i in range(500, 700)]
        assert store.train_dictionary() == 1
        packed = [store.codec.encode_state(_state(i)) for i in range(500, 700)]
    finally:
        store.close()
    raw = sum(_HEADER.unpack_from(b)[4] for b in plain)
    assert 800 <= raw / len(plain) <= 1400  # they are the 1 KB states the row is about
    ratio_plain = raw / sum(len(b) for b in plain)
    ratio_dict = raw / sum(len(b) for b in packed)
    assert ratio_dict >= 2.0, (ratio_plain, ratio_dict)
    assert ratio_dict >= 1.5 * ratio_plain


def test_a_damaged_dictionary_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.open()
    try:
        store.commit([CreateContext(_state(i)) for i in range(200)])
        assert store.train_dictionary() == 1
    finally:
        store.close()
    db = sqlite3.connect(path)
    with db:
        blob = bytearray(db.execute("SELECT blob FROM dictionaries WHERE version = 1").fetchone()[0])
        blob[-10] ^= 0xFF
        db.execute("UPDATE dictionaries SET blob = ? WHERE version = 1", (bytes(blob),))
    db.close()
    damaged = SQLiteStore(path)
    with pytest.raises(CorruptStateError, match="compression dictionary 1: checksum mismatch"):
        damaged.open()
    damaged.close()


def test_a_blob_whose_dictionary_is_missing_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.open()
    try:
        store.commit([CreateContext(_state(i)) for i in range(200)])
        store.train_dictionary()
        blob = store.codec.encode_change(Change(2, time.time(), freeze_mapping({"k": "v" * 60})))
    finally:
        store.close()
    assert _flags(blob) == 3
    with pytest.raises(CorruptStateError, match=f"needs compression dictionary {DICT_ID_BASE + 1}"):
        Codec().decode_change(blob)


def test_a_running_system_trains_a_dictionary_and_ls_reads_every_context_through_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "DICTIONARY_AFTER", 150)  # not 2,000 writes in a unit test
    path = tmp_path / "state.db"
    with open_system(path, manager_config=ContextManagerConfig(durability="immediate", sync="normal")) as s:
        for i in range(120):
            s.manager.create(f"s{i}", session(i))
        for i in range(60):
            s.adapter.activate(f"s{i}").set("last_page", f"/checkout/{i}")
    db = sqlite3.connect(path)
    try:
        assert [r[0] for r in db.execute("SELECT version FROM dictionaries")] == [1]
    finally:
        db.close()
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "hoard.cli", "ls", str(path), "--json"], capture_output=True,  # noqa: S603
                          text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    # `ls` reads through the store's read interface (stored bytes only since the CLI moved onto it; that
    # no blob outgrows its payload is test_no_blob_is_bigger_than_its_payload_plus_the_header)
    assert {f"s{i}" for i in range(120)} <= {r["id"] for r in rows}  # and the default context
    assert all(r["stored_bytes"] > 0 for r in rows)


def test_a_reader_open_before_a_dictionary_was_trained_reads_blobs_that_use_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = SQLiteStore(path, dictionary=False)
    writer.open()
    reader = writer.reader()
    reader.open()  # loads the dictionaries there are now: none
    try:
        writer.commit([CreateContext(_state(i)) for i in range(200)])
        assert writer.train_dictionary() == 1
        writer.commit([CreateContext(_state(500))])  # written with dictionary 1
        loaded = reader.load("s500")
        assert loaded is not None and dict(loaded.data) == session(500)
    finally:
        reader.close()
        writer.close()
