"""Offline reads the `Store` protocol does not offer yet: journal entries, the kept snapshots, an older
version rebuilt from them, uncompressed sizes, and file-level statistics.

They read the SQLite tables documented in `hoard.storage._sqlite` through a second, read-only connection
(``mode=ro``: no writer lock, committed data only) and decode every blob with the store's own
`Codec`, so every checksum and format check still applies. This couples the CLI to the SQLite
schema; it is the stopgap until `SQLiteStore` grows these reads itself (``journal()``,
``snapshot_versions()``, ``load_version()``, ``stats()``) -- see the issue 5 report.

Single-threaded: one `StoreReader` is used by one command in the main thread.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from typing import Any
from urllib.parse import quote

import attrs

from hoard.storage import Change, ContextState, CorruptStateError, PersistenceError, SQLiteStore, apply_change

__all__ = ["Rebuilt", "StoreReader"]

_MAGIC = b"\x89HRD"
_HEAD = struct.Struct("<4sBBBxQ")  # magic, format, kind, flags, decompressed length (see hoard.storage._codec)


@attrs.frozen
class Rebuilt:
    """An older version of a context and how it was obtained."""

    state: ContextState
    source: str  # "current", "recovery point 3", "snapshot v40 + 7 journal entries"


class StoreReader:
    """Raw reads beside an open read-only `SQLiteStore` (whose codec and checks it reuses)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        uri = "file:" + quote(os.path.abspath(store.path)) + "?mode=ro"
        if os.statvfs(os.path.abspath(store.path)).f_flag & os.ST_RDONLY:
            uri += "&immutable=1"  # a read-only filesystem: no WAL index can be made, and nobody writes
        try:
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise PersistenceError(f"cannot read {store.path!r}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise PersistenceError(f"cannot read {self.store.path!r}: {exc}") from exc

    # -- sizes ----------------------------------------------------------------------------------------
    def sizes(self, context_id: str) -> tuple[int, int]:
        """(uncompressed, stored) bytes of the payloads of the context's snapshots and journal entries
        (without each row's header, so that stored <= uncompressed: a payload that compression does
        not shrink is stored raw)."""
        rows = self._rows("SELECT substr(blob, 1, 16), length(blob) FROM snapshots WHERE context_id=? "
                          "UNION ALL SELECT substr(blob, 1, 16), length(blob) FROM journal WHERE context_id=?",
                          (context_id, context_id))
        return _raw_total(rows), sum(max(0, r[1] - _HEAD.size - 4) for r in rows)  # 4: the header's crc32

    # -- snapshots and journal ----------------------------------------------------------------------
    def snapshot_versions(self, context_id: str) -> list[int]:
        """Versions of the kept snapshots, oldest first."""
        return [r[0] for r in self._rows("SELECT version FROM snapshots WHERE context_id=? ORDER BY version",
                                         (context_id,))]

    def journal_versions(self, context_id: str) -> list[int]:
        return [r[0] for r in self._rows("SELECT version FROM journal WHERE context_id=? ORDER BY version",
                                         (context_id,))]

    def journal(self, context_id: str, after: int = 0, upto: int | None = None) -> list[Change]:
        """Decoded journal entries with ``after < version <= upto``, oldest first.

        Raises `CorruptStateError` for an entry that fails verification or holds another version.
        """
        hi = upto if upto is not None else 2**62
        out = []
        for version, blob in self._rows("SELECT version, blob FROM journal WHERE context_id=? AND version>? "
                                        "AND version<=? ORDER BY version", (context_id, after, hi)):
            what = f"journal entry v{version} of {context_id!r}"
            change = self.store.codec.decode_change(blob, what)
            if change.version != version:
                raise CorruptStateError(f"{what} holds v{change.version}", context_id=context_id, what="journal")
            out.append(change)
        return out

    def rebuildable(self, context_id: str, version: int) -> tuple[int, int] | None:
        """The range of versions that the kept snapshots plus the contiguous journal after the oldest
        of them can rebuild (up to `version`, the stored one); None if none can."""
        journal = set(self.journal_versions(context_id))
        for snap in self.snapshot_versions(context_id):  # oldest first: the widest range wins
            v = snap
            while v < version and v + 1 in journal:
                v += 1
            if v == version:
                return snap, version
        return None

    def load_version(self, context_id: str, version: int) -> Rebuilt | None:
        """The context as it was at `version`: from a recovery point of that version, or from the
        newest kept snapshot at or below it plus the journal. None if neither can rebuild it.

        All rows are read in one read transaction. Raises `CorruptStateError` if a row it needs
        fails verification.
        """
        self._rows("BEGIN")
        try:
            for rp in self.store.recovery_points(context_id):
                if rp.version == version:
                    return Rebuilt(rp.state, f"recovery point {rp.id}")
            for snap in reversed(self.snapshot_versions(context_id)):
                if snap > version:
                    continue
                changes = self.journal(context_id, after=snap, upto=version)
                if [c.version for c in changes] != list(range(snap + 1, version + 1)):
                    continue  # a gap: an older snapshot may still reach it
                (blob,) = self._rows("SELECT blob FROM snapshots WHERE context_id=? AND version=?",
                                     (context_id, snap))[0]
                state = self.store.codec.decode_state(blob, f"snapshot v{snap} of {context_id!r}")
                for change in changes:
                    state = apply_change(state, change)
                entries = f"{len(changes)} journal entr{'y' if len(changes) == 1 else 'ies'}"
                return Rebuilt(state, f"snapshot v{snap} + {entries}")
            return None
        finally:
            self._rows("COMMIT")

    # -- the whole store ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts and sizes for `hoard stats`."""
        one = self._rows
        contexts, versions = one("SELECT count(*), coalesce(sum(version), 0) FROM contexts")[0]
        out: dict[str, Any] = {"contexts": contexts, "versions_total": versions}
        for table in ("snapshots", "journal", "recovery_points"):
            n, size = one(f"SELECT count(*), coalesce(sum(length(blob)), 0) FROM {table}")[0]  # noqa: S608
            raw = _raw_total(one(f"SELECT substr(blob, 1, 16) FROM {table}"))  # noqa: S608
            out[table] = {"count": n, "stored_bytes": size, "raw_bytes": raw}
        tables = {r[0] for r in one("SELECT name FROM sqlite_master WHERE type='table'")}
        out["quarantined_rows"] = one("SELECT count(*) FROM quarantine")[0][0] if "quarantine" in tables else 0
        out["page_size"] = one("PRAGMA page_size")[0][0]
        out["pages"] = one("PRAGMA page_count")[0][0]
        out["free_pages"] = one("PRAGMA freelist_count")[0][0]
        out["largest"] = [{"id": cid, "stored_bytes": size} for cid, size in one(
            "SELECT context_id, sum(length(blob)) AS n FROM (SELECT context_id, blob FROM snapshots "
            "UNION ALL SELECT context_id, blob FROM journal) GROUP BY context_id ORDER BY n DESC LIMIT 5")]
        return out


def _raw_total(rows: list[Any]) -> int:
    """Sum of the decompressed lengths in blob headers (rows whose first column is a header)."""
    total = 0
    for row in rows:
        head = row[0]
        if isinstance(head, bytes) and len(head) >= _HEAD.size and head[:4] == _MAGIC:
            total += _HEAD.unpack_from(head)[4]
    return total
