"""The SQL of the PostgreSQL store: its migrations and every statement, with ``{s}`` for the quoted
schema (`PostgresStore` formats them once per store). Kept apart so that the store module reads as
what it does, and the SQL as one reviewable list."""

from __future__ import annotations

import re

__all__ = ["APPENDS_STATEMENT", "APPENDS_TYPES", "APPEND_ONE_STATEMENT", "APPEND_ONE_TYPES", "IDENT", "LISTENING",
           "LISTEN_LOCK_SPACE", "MIGRATIONS", "QUARANTINE_TABLE", "REFUSE", "SCHEMA_VERSION", "SQL", "TABLES"]

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Migrations, in order; migration n brings a schema from version n-1 to n. Never edit a released one:
# append a new one. "{s}" is the quoted schema name.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: journal + snapshots + recovery points, and ownership leases
        'CREATE TABLE {s}.contexts (id text COLLATE "C" PRIMARY KEY, version bigint NOT NULL, '
        "created_at double precision NOT NULL, updated_at double precision NOT NULL, "
        "next_rp_id bigint NOT NULL DEFAULT 1)",
        'CREATE TABLE {s}.snapshots (context_id text COLLATE "C" NOT NULL, version bigint NOT NULL, '
        "blob bytea NOT NULL, PRIMARY KEY (context_id, version))",
        'CREATE TABLE {s}.journal (context_id text COLLATE "C" NOT NULL, version bigint NOT NULL, '
        "blob bytea NOT NULL, PRIMARY KEY (context_id, version))",
        'CREATE TABLE {s}.recovery_points (context_id text COLLATE "C" NOT NULL, rp_id bigint NOT NULL, '
        "version bigint NOT NULL, label text, created_at double precision NOT NULL, blob bytea NOT NULL, "
        "PRIMARY KEY (context_id, rp_id))",
        'CREATE TABLE {s}.leases (context_id text COLLATE "C" PRIMARY KEY, owner text NOT NULL, '
        "token bigint NOT NULL, expires_at timestamptz NOT NULL)",
        # blobs are zstd-compressed already: keep PostgreSQL from compressing them again
        "ALTER TABLE {s}.snapshots ALTER COLUMN blob SET STORAGE EXTERNAL",
        "ALTER TABLE {s}.journal ALTER COLUMN blob SET STORAGE EXTERNAL",
        "ALTER TABLE {s}.recovery_points ALTER COLUMN blob SET STORAGE EXTERNAL",
    ),
    (  # 2: the change feed. feed_head is one row: the newest offset given and the pruned-up-to one
        'CREATE TABLE {s}.feed (pos bigint PRIMARY KEY, context_id text COLLATE "C" NOT NULL, '
        "version bigint NOT NULL, blob bytea NOT NULL)",
        "ALTER TABLE {s}.feed ALTER COLUMN blob SET STORAGE EXTERNAL",
        "CREATE TABLE {s}.feed_head (id integer PRIMARY KEY CHECK (id = 1), head bigint NOT NULL, "
        "floor bigint NOT NULL)",
        "INSERT INTO {s}.feed_head VALUES (1, 0, 0)",
        "CREATE TABLE {s}.feed_consumers (name text PRIMARY KEY, pos bigint NOT NULL)",
        # store-wide settings every process follows (the history policy)
        "CREATE TABLE {s}.settings (key text PRIMARY KEY, value text NOT NULL)",
    ),
)
#: the table layout this hoard writes; a schema of a higher version is refused
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = {"schema_version", "contexts", "snapshots", "journal", "recovery_points", "leases"}

# Who listens: every session that wants the notices of a schema holds this advisory lock, shared, for
# as long as it listens (`LISTENING`, with the schema name): a `ChangeListener` (after its LISTEN),
# and every pooled session of a notifying writing store on behalf of its own process's listener. A
# batch of appends notifies only if its session cannot take the same lock exclusively for its
# transaction (``pg_try_advisory_xact_lock``: the session's own shared hold does not count), that is
# only when a session of another store or a listener holds it: a process alone on its schema does
# not wake its own listener with its own notices. A listener that joins waits for its shared lock
# until every transaction that took it exclusively (and so sends no notice) has ended: a commit
# after `ChangeListener.open()` returns is always notified.
LISTEN_LOCK_SPACE = 0x686F6173
LISTENING = f"SELECT pg_advisory_lock_shared({LISTEN_LOCK_SPACE}, hashtext(%(schema)s))"

# -- SQL (formatted once per store with its schema) -----------------------------------------------------
# Lock the lease row of every context a batch touches (creating a free one if missing, so that a
# concurrent first acquisition waits for this transaction too), in id order (no deadlocks between
# writers), and check the fence in the server: a row whose token is not the one this store holds
# (``mine``), or, where it holds none, a live lease or ``strict`` (require_lease), fails the statement
# (`REFUSE`: "hoard: fenced", the row as JSON in the detail), so that a pipeline that sends COMMIT
# behind it commits nothing. Otherwise one row per id: the transaction id (to resolve a commit lost
# in flight).
_FENCE_LOCK = """
WITH f AS (INSERT INTO {s}.leases AS l (context_id, owner, token, expires_at)
           SELECT id, '', 0, '-infinity' FROM unnest(%(ids)s::text[]) AS id ORDER BY id
           ON CONFLICT (context_id) DO UPDATE SET token = l.token
           RETURNING l.context_id, l.owner, l.token, l.expires_at > now() AS live)
SELECT """
_FENCE_CHECK = """CASE WHEN h.mine IS DISTINCT FROM f.token AND (h.mine IS NOT NULL OR f.live OR %(strict)s)
       THEN pg_temp.hoard_refuse('fenced', json_build_object('id', f.context_id, 'owner', f.owner,
                                                             'token', f.token, 'mine', h.mine)::text)::bigint
       ELSE txid_current() END"""
_FENCE_JOIN = """
FROM f JOIN unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS h(id, mine) ON h.id = f.context_id"""
_FENCE = _FENCE_LOCK + _FENCE_CHECK + _FENCE_JOIN + "\nORDER BY f.context_id"
# A journal entry that does not follow the stored version fails the statement ("hoard: version",
# the id, the version and the stored one as JSON in the detail), so that nothing of its batch commits.
_APPEND = """
WITH u AS (UPDATE {s}.contexts SET version = %(v)s, updated_at = %(at)s
           WHERE id = %(id)s AND version = %(prev)s RETURNING id)
INSERT INTO {s}.journal (context_id, version, blob)
SELECT coalesce((SELECT id FROM u), pg_temp.hoard_refuse('version', json_build_object(
           'id', %(id)s::text, 'v', %(v)s::bigint,
           'stored', (SELECT version FROM {s}.contexts WHERE id = %(id)s))::text)), %(v)s, %(blob)s"""
# A create also removes leftover rows of its id (a context deleted by hand, or orphans verify() has
# not fixed yet) so that they never mix in: the snapshot rows at other versions, the journal and the
# recovery points (a leftover snapshot at the same version is overwritten).
_CREATE = """
WITH c AS (INSERT INTO {s}.contexts (id, version, created_at, updated_at) VALUES (%(id)s, %(v)s, %(c)s, %(u)s)
           ON CONFLICT (id) DO NOTHING RETURNING id),
     ds AS (DELETE FROM {s}.snapshots WHERE context_id IN (SELECT id FROM c) AND version <> %(v)s),
     dj AS (DELETE FROM {s}.journal WHERE context_id IN (SELECT id FROM c)),
     dr AS (DELETE FROM {s}.recovery_points WHERE context_id IN (SELECT id FROM c))
INSERT INTO {s}.snapshots (context_id, version, blob) SELECT id, %(v)s, %(blob)s FROM c
ON CONFLICT (context_id, version) DO UPDATE SET blob = EXCLUDED.blob RETURNING version"""
_SNAPSHOT_TRIM = """
WITH k AS (SELECT min(version) AS v FROM (SELECT version FROM {s}.snapshots WHERE context_id = %(id)s
                                           ORDER BY version DESC LIMIT 2) AS newest),
     d AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s AND version < (SELECT v FROM k))
DELETE FROM {s}.journal WHERE context_id = %(id)s AND version <= (SELECT v FROM k)"""
_RP_INSERT = """
WITH c AS (UPDATE {s}.contexts SET next_rp_id = %(rp)s + 1 WHERE id = %(id)s AND next_rp_id = %(rp)s RETURNING id)
INSERT INTO {s}.recovery_points (context_id, rp_id, version, label, created_at, blob)
SELECT id, %(rp)s, %(v)s, %(label)s, %(at)s, %(blob)s FROM c RETURNING rp_id"""
_RP_TRIM = """
DELETE FROM {s}.recovery_points WHERE context_id = %(id)s AND rp_id < (
    SELECT min(rp_id) FROM (SELECT rp_id FROM {s}.recovery_points WHERE context_id = %(id)s
                            ORDER BY rp_id DESC LIMIT %(keep)s) AS newest)"""
_DELETE = """
WITH j AS (DELETE FROM {s}.journal WHERE context_id = %(id)s),
     s AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s),
     r AS (DELETE FROM {s}.recovery_points WHERE context_id = %(id)s)
DELETE FROM {s}.contexts WHERE id = %(id)s"""
_NOTIFY = """
SELECT pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', n.id, 'v', c.version,
                                           'ops', string_to_array(n.ops, ','), 'owner', %(owner)s::text)::text)
FROM unnest(%(ids)s::text[], %(ops)s::text[]) AS n(id, ops) LEFT JOIN {s}.contexts c ON c.id = n.id"""
# The same notices for a batch of appends only, whose versions the client knows (the last appended
# per id): no join with contexts (about a tenth of a lone durable commit, measured per op).
_NOTIFY_APPENDS = """
SELECT pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', n.id, 'v', n.v,
                                           'ops', string_to_array(n.ops, ','), 'owner', %(owner)s::text)::text)
FROM unnest(%(ids)s::text[], %(ops)s::text[], %(vs)s::bigint[]) AS n(id, ops, v)"""
# The feed rows of a commit, the last statement before COMMIT. The UPDATE takes the one feed_head row
# lock and holds it until COMMIT: a second committer waits here until the first has committed (or
# rolled back, which returns its offsets unused), so offsets are handed out in commit order and
# become visible in that order. A reader that sees offset n therefore already sees every entry below
# n: no entry with a lower offset can commit after a reader passed it (the sequence-gap problem).
_FEED_INSERT = """
WITH h AS (UPDATE {s}.feed_head SET head = head + %(n)s WHERE id = 1 RETURNING head)
INSERT INTO {s}.feed (pos, context_id, version, blob)
SELECT h.head - %(n)s + t.o, t.id, t.v, t.blob FROM h,
       unnest(%(ids)s::text[], %(vs)s::bigint[], %(blobs)s::bytea[]) WITH ORDINALITY AS t(id, v, blob, o)"""
# Retention, in a commit that holds the feed_head lock: past every consumer, within the bound.
_FEED_PRUNE = """
WITH b AS (SELECT head, floor, (SELECT min(pos) FROM {s}.feed_consumers) AS passed FROM {s}.feed_head WHERE id = 1),
     n AS (SELECT greatest(floor, head - %(keep)s, coalesce(passed, head - %(keep)s)) AS f, floor AS old FROM b),
     u AS (UPDATE {s}.feed_head SET floor = (SELECT f FROM n) WHERE id = 1 AND floor < (SELECT f FROM n))
DELETE FROM {s}.feed WHERE pos <= (SELECT f FROM n) AND pos > (SELECT old FROM n)"""
# One statement, so the newest snapshot, the journal after it and the acknowledged version are read
# from one consistent snapshot of the database even while other processes write.
_LOAD = """
SELECT 0, version, NULL::bytea FROM {s}.contexts WHERE id = %(id)s
UNION ALL (SELECT 1, version, blob FROM {s}.snapshots WHERE context_id = %(id)s ORDER BY version DESC LIMIT 1)
UNION ALL SELECT 2, version, blob FROM {s}.journal WHERE context_id = %(id)s
    AND version > (SELECT coalesce(max(version), 0) FROM {s}.snapshots WHERE context_id = %(id)s)"""
# Damaged or unusable rows a fallback recovery or a repair takes out of the way: kept for inspection,
# never loaded. Created by the first repair that needs it (not by a migration: a store nobody repaired
# keeps exactly the tables of schema version 1).
QUARANTINE_TABLE = (
    'CREATE TABLE IF NOT EXISTS {s}.quarantine (context_id text COLLATE "C" NOT NULL, source text NOT NULL, '
    "version bigint, rp_id bigint, problem text NOT NULL, at double precision NOT NULL, blob bytea)",
    "ALTER TABLE {s}.quarantine ALTER COLUMN blob SET STORAGE EXTERNAL",
)
_QUARANTINE_ROW = """
WITH d AS (DELETE FROM {s}.{table} WHERE context_id = %(id)s AND {key} = %(k)s RETURNING blob)
INSERT INTO {s}.quarantine (context_id, source, version, rp_id, problem, at, blob)
VALUES (%(id)s, %(source)s, %(v)s, %(rp)s, %(problem)s, %(at)s, (SELECT blob FROM d LIMIT 1))"""
_SUMMARY = """
SELECT c.id, c.version, c.created_at, c.updated_at,
 (SELECT max(version) FROM {s}.snapshots s WHERE s.context_id = c.id),
 (SELECT count(*) FROM {s}.journal j WHERE j.context_id = c.id),
 c.next_rp_id,
 (SELECT count(*) FROM {s}.recovery_points r WHERE r.context_id = c.id),
 (SELECT coalesce(sum(octet_length(blob)), 0) FROM {s}.snapshots s WHERE s.context_id = c.id)::bigint
 + (SELECT coalesce(sum(octet_length(blob)), 0) FROM {s}.journal j WHERE j.context_id = c.id)::bigint,
 c.ttl
FROM {s}.contexts c"""
_TOTALS = """
SELECT (SELECT count(*) FROM {s}.contexts),
 (SELECT count(*) FROM {s}.snapshots), (SELECT coalesce(sum(octet_length(blob)), 0)::bigint FROM {s}.snapshots),
 (SELECT count(*) FROM {s}.journal), (SELECT coalesce(sum(octet_length(blob)), 0)::bigint FROM {s}.journal),
 (SELECT count(*) FROM {s}.recovery_points),
 (SELECT coalesce(sum(octet_length(blob)), 0)::bigint FROM {s}.recovery_points)"""
_ACQUIRE = """
WITH a AS (
  INSERT INTO {s}.leases AS l (context_id, owner, token, expires_at)
  VALUES (%(id)s, %(owner)s, 1, now() + make_interval(secs => %(ttl)s))
  ON CONFLICT (context_id) DO UPDATE
    SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    WHERE l.expires_at <= now() OR (l.owner = EXCLUDED.owner AND EXISTS (
      -- an earlier incarnation's lease is taken back only while this session's claim to the owner
      -- id holds (see _postgres_leases: a zombie whose claim ended cannot take the new one's leases)
      SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = %(lock_pid)s AND granted
        AND classid = %(lock_space)s::oid AND objid = hashtext(%(lock_key)s)::oid AND objsubid = 2))
  RETURNING l.token)
SELECT token, pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', %(id)s::text,
        'ops', ARRAY['lease_acquired'], 'owner', %(owner)s::text, 'token', token)::text) FROM a"""
_RENEW = """
UPDATE {s}.leases SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE context_id = %(id)s AND token = %(token)s AND owner = %(owner)s RETURNING token"""
# Renew every lease held, in one statement, and return the ids no longer held (taken over). A lease
# row another session holds locked (a stale writer paused inside its transaction, after its fence
# locked the row) is skipped, not waited for: it is still held as far as the snapshot shows, and the
# next renewal gets it; waiting would delay every commit behind the renewal, then fail them all.
_RENEW_ALL = """
WITH h AS (SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS h(id, token)),
     k AS (SELECT l.context_id FROM {s}.leases l JOIN h ON l.context_id = h.id AND l.token = h.token
           WHERE l.owner = %(owner)s FOR UPDATE OF l SKIP LOCKED),
     r AS (UPDATE {s}.leases AS l SET expires_at = now() + make_interval(secs => %(ttl)s) FROM k
           WHERE l.context_id = k.context_id RETURNING l.context_id)
SELECT h.id FROM h WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.context_id = h.id)
  AND NOT EXISTS (SELECT 1 FROM {s}.leases l WHERE l.context_id = h.id AND l.token = h.token AND l.owner = %(owner)s)"""
_RELEASE = """
WITH r AS (UPDATE {s}.leases SET expires_at = '-infinity'
           WHERE context_id = %(id)s AND token = %(token)s AND owner = %(owner)s RETURNING context_id)
SELECT context_id, pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', context_id,
        'ops', ARRAY['lease_released'], 'owner', %(owner)s::text)::text) FROM r"""
_HOLDER = """
SELECT owner, token, expires_at > now(),
       CASE WHEN expires_at > now() THEN extract(epoch FROM expires_at - now())::float8 END
FROM {s}.leases WHERE context_id = %(id)s"""


# The refusal the fence and the append statements raise (see `_FENCE`, `_APPEND`): a function of the
# session (pg_temp, made by every writing connection when it connects), so the store's schema holds no
# code and any hoard that shares it needs none. The message names the check, the detail is JSON.
REFUSE = """
CREATE OR REPLACE FUNCTION pg_temp.hoard_refuse(what text, detail text) RETURNS text LANGUAGE plpgsql AS
$$BEGIN RAISE EXCEPTION USING MESSAGE = 'hoard: ' || what, DETAIL = detail; END$$"""
# Whether a batch of appends sent with its COMMIT in one round trip committed, asked after its
# connection broke: is its old session still in a transaction (then ask again), and is the first
# append's journal row there with this batch's blob (the batch is one transaction: all or none)?
_APPENDED = """
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %(pid)s AND xact_start IS NOT NULL),
       (SELECT blob = %(blob)s FROM {s}.journal WHERE context_id = %(id)s AND version = %(v)s),
       (SELECT version FROM {s}.contexts WHERE id = %(id)s)"""


def _in_function(sql: str, names: dict[str, str]) -> str:
    """`sql` with each parameter ``%(name)s`` replaced by the PL/pgSQL expression `names` gives it."""
    return re.sub(r"%\((\w+)\)s", lambda m: names[m.group(1)], sql)


# A batch of appends only (the common commit) as ONE statement between BEGIN and COMMIT: a function of
# the session (made with `REFUSE` by every writing connection) runs the statements above in order in
# the server: the fence, each append, the notices (_ch NULL: none; and none when nobody else listens,
# see `LISTENING`) and the feed rows (and the pruning
# when _keep is given), each refusal failing it as it fails the statement. The client sends three
# statements instead of four plus one per append, and the server plans none of them again (PL/pgSQL
# keeps its plans per session). count() reads every row of the fence, so every id is checked.
_APPENDS_FN = (
    "CREATE OR REPLACE FUNCTION pg_temp.hoard_appends(_ids text[], _tokens bigint[], _strict boolean, "
    "_aids text[], _vs bigint[], _ats float8[], _blobs bytea[], _ch text, _schema text, _owner text, "
    "_ops text[], _last bigint[], _feed boolean, _keep bigint) RETURNS void LANGUAGE plpgsql AS $fn$\n"
    "DECLARE _i integer; _n integer;\nBEGIN\n"
    + _in_function(_FENCE_LOCK + "count(" + _FENCE_CHECK + ") INTO _n" + _FENCE_JOIN,
                   {"ids": "_ids", "tokens": "_tokens", "strict": "_strict"})
    + ";\nFOR _i IN 1 .. cardinality(_aids) LOOP\n"
    + _in_function(_APPEND, {"id": "_aids[_i]", "v": "_vs[_i]", "prev": "(_vs[_i] - 1)", "at": "_ats[_i]",
                             "blob": "_blobs[_i]"})
    + ";\nEND LOOP;\nIF _ch IS NOT NULL AND NOT pg_try_advisory_xact_lock("
    + f"{LISTEN_LOCK_SPACE}, hashtext(_schema)) THEN\n"
    + _in_function(_NOTIFY_APPENDS, {"ch": "_ch", "schema": "_schema", "owner": "_owner", "ids": "_ids",
                                     "ops": "_ops", "vs": "_last"}).replace("SELECT", "PERFORM", 1)
    + ";\nEND IF;\nIF _feed THEN\n_n := cardinality(_aids);\n"
    + _in_function(_FEED_INSERT, {"n": "_n", "ids": "_aids", "vs": "_vs", "blobs": "_blobs"})
    + ";\nIF _keep IS NOT NULL THEN\n" + _in_function(_FEED_PRUNE, {"keep": "_keep"})
    + ";\nEND IF;\nEND IF;\nEND $fn$")
_APPENDS_CALL = ("SELECT pg_temp.hoard_appends({ids}, {tokens}, %(strict)s, {aids}, {vs}, {ats}, {blobs}, %(ch)s, "
                 "%(schema)s, %(owner)s, {ops}, {last}, %(feed)s, %(keep)s)")
_APPENDS = _APPENDS_CALL.format(ids="%(ids)b::text[]", tokens="%(tokens)b::bigint[]", aids="%(aids)b::text[]",
                                vs="%(vs)b::bigint[]", ats="%(ats)b::float8[]", blobs="%(blobs)b::bytea[]",
                                ops="%(ops)b::text[]", last="%(last)b::bigint[]")
# The commonest batch, one append, as a function of its own with scalar parameters and one plain
# statement per step (the same steps, checks and order as `_APPENDS_FN`): the fence's upsert of the one
# lease row, the version-checked UPDATE of contexts and the journal INSERT, the notice, the feed_head
# UPDATE and the feed INSERT. Each is a simple plan the executor starts cheaply; the CTEs, unnest joins
# and subqueries of the batch function cost the server about a third more per call (backend CPU per
# commit 0.27-0.30 against 0.21-0.23 ms, store level, five alternating rounds).
_APPEND_ONE_FN = (
    "CREATE OR REPLACE FUNCTION pg_temp.hoard_append(_id text, _token bigint, _strict boolean, _v bigint, "  # noqa: S608 - fixed text
    "_at float8, _blob bytea, _ch text, _schema text, _owner text, _feed boolean, _keep bigint) RETURNS void "
    "LANGUAGE plpgsql AS $fn$\n"
    "DECLARE _lo text; _tok bigint; _live boolean; _h bigint;\nBEGIN\n"
    # the lease row locked (made free if missing), as by `_FENCE`
    "INSERT INTO {s}.leases AS l (context_id, owner, token, expires_at) VALUES (_id, '', 0, '-infinity')\n"
    "  ON CONFLICT (context_id) DO UPDATE SET token = l.token\n"
    "  RETURNING l.owner, l.token, l.expires_at > now() INTO _lo, _tok, _live;\n"
    "IF _token IS DISTINCT FROM _tok AND (_token IS NOT NULL OR _live OR _strict) THEN\n"
    "  PERFORM pg_temp.hoard_refuse('fenced', json_build_object('id', _id, 'owner', _lo, 'token', _tok,\n"
    "                                                           'mine', _token)::text);\n"
    "END IF;\n"
    # the version check, as by `_APPEND`
    "UPDATE {s}.contexts SET version = _v, updated_at = _at WHERE id = _id AND version = _v - 1;\n"
    "IF NOT FOUND THEN\n"
    "  PERFORM pg_temp.hoard_refuse('version', json_build_object('id', _id, 'v', _v,\n"
    "      'stored', (SELECT version FROM {s}.contexts WHERE id = _id))::text);\n"
    "END IF;\n"
    "INSERT INTO {s}.journal (context_id, version, blob) VALUES (_id, _v, _blob);\n"
    f"IF _ch IS NOT NULL AND NOT pg_try_advisory_xact_lock({LISTEN_LOCK_SPACE}, hashtext(_schema)) THEN\n"
    "  PERFORM pg_notify(_ch, json_build_object('schema', _schema, 'id', _id, 'v', _v, 'ops', ARRAY['append'],\n"
    "                                           'owner', _owner)::text);\n"
    "END IF;\n"
    # the feed row last (see `_FEED_INSERT`: the feed_head row lock is held from here to COMMIT)
    "IF _feed THEN\n"
    "  UPDATE {s}.feed_head SET head = head + 1 WHERE id = 1 RETURNING head INTO _h;\n"
    "  INSERT INTO {s}.feed (pos, context_id, version, blob) VALUES (_h, _id, _v, _blob);\n"
    "  IF _keep IS NOT NULL THEN\n" + _in_function(_FEED_PRUNE, {"keep": "_keep"}) + ";\n  END IF;\n"
    "END IF;\nEND $fn$")
_APPEND_ONE = ("SELECT pg_temp.hoard_append(%(id)s, %(token)s, %(strict)s, %(v)s, %(at)s, %(blob)s, %(ch)s, "
               "%(schema)s, %(owner)s, %(feed)s, %(keep)s)")
# The same call as a statement a writing session prepares at its first lone append, under a name of its
# own (psycopg's are "_pg3_<n>"), executed through libpq with its parameters already in binary form (see
# `PostgresStore._append_one`), of these types: text, bigint, boolean, bigint, float8, bytea, text x 3,
# boolean, bigint.
APPEND_ONE_STATEMENT = "hoard_append"
APPEND_ONE_TYPES = (25, 20, 16, 20, 701, 17, 25, 25, 25, 16, 20)  # the types' oids
_APPEND_ONE_CALL = "SELECT pg_temp.hoard_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
# The batch call (`_APPENDS`) the same way: prepared by the session at its first batch of appends, its
# parameters (arrays included) in binary form (see `PostgresStore._appends_direct`), of these types:
# text[], bigint[], boolean, text[], bigint[], float8[], bytea[], text x 3, text[], bigint[], boolean, bigint.
APPENDS_STATEMENT = "hoard_appends"
APPENDS_TYPES = (1009, 1016, 16, 1009, 1016, 1022, 1001, 25, 25, 25, 1009, 1016, 16, 20)  # the types' oids
_APPENDS_POSITIONAL = "SELECT pg_temp.hoard_appends(" + ", ".join(f"${i}" for i in range(1, 15)) + ")"


# every statement by name
SQL: dict[str, str] = {
    "fence": _FENCE, "append": _APPEND, "create": _CREATE, "snapshot_trim": _SNAPSHOT_TRIM,
    "rp_insert": _RP_INSERT, "rp_trim": _RP_TRIM, "delete": _DELETE, "notify": _NOTIFY,
    "appends_fn": _APPENDS_FN, "appends": _APPENDS, "append_one_fn": _APPEND_ONE_FN, "append_one": _APPEND_ONE,
    "append_one_call": _APPEND_ONE_CALL, "appends_call": _APPENDS_POSITIONAL, "load": _LOAD, "appended": _APPENDED,
    "summary": _SUMMARY + " WHERE c.id = %(id)s",
    "summaries": _SUMMARY + " WHERE c.id >= %(p)s AND starts_with(c.id, %(p)s) ORDER BY c.id",
    "totals": _TOTALS, "acquire": _ACQUIRE, "renew": _RENEW, "renew_all": _RENEW_ALL, "release": _RELEASE,
    "holder": _HOLDER,
    "owner_lock": "SELECT pg_try_advisory_lock(%(lock_space)s, hashtext(%(lock_key)s)), pg_backend_pid()",
    "feed_insert": _FEED_INSERT, "feed_prune": _FEED_PRUNE,
    "feed_bounds": "SELECT floor, head FROM {s}.feed_head WHERE id = 1",
    "feed_rows": "SELECT pos, context_id, blob FROM {s}.feed WHERE pos > %(after)s ORDER BY pos LIMIT %(limit)s",
    "consumers": "SELECT name, pos FROM {s}.feed_consumers ORDER BY name",
    "consumer_lock": "SELECT pos FROM {s}.feed_consumers WHERE name = %(name)s FOR UPDATE",
    "consumer_set": "INSERT INTO {s}.feed_consumers (name, pos) VALUES (%(name)s, %(pos)s) "
                    "ON CONFLICT (name) DO UPDATE SET pos = EXCLUDED.pos",
    "consumer_delete": "DELETE FROM {s}.feed_consumers WHERE name = %(name)s",
    "has_feed": "SELECT to_regclass(%(t)s) IS NOT NULL",
    "get_setting": "SELECT value FROM {s}.settings WHERE key = %(k)s",
    "set_setting": "INSERT INTO {s}.settings (key, value) VALUES (%(k)s, %(v)s) "
                   "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    "trim_snapshots": "DELETE FROM {s}.snapshots WHERE context_id = %(id)s AND version < %(v)s",
    "trim_journal": "DELETE FROM {s}.journal WHERE context_id = %(id)s AND version <= %(v)s",
    "all_versions": "SELECT id, version FROM {s}.contexts",
    "lock_context": "SELECT version FROM {s}.contexts WHERE id = %(id)s FOR UPDATE",
    # which lease rows of a batch another session holds locked (never waits: SKIP LOCKED)
    "lockable": "SELECT l.context_id, f.context_id IS NOT NULL FROM {s}.leases l LEFT JOIN "
                "(SELECT context_id FROM {s}.leases WHERE context_id = ANY(%(ids)s) FOR UPDATE SKIP LOCKED) f "
                "ON f.context_id = l.context_id WHERE l.context_id = ANY(%(ids)s)",
    "version": "SELECT version FROM {s}.contexts WHERE id = %(id)s",
    "next_rp": "SELECT next_rp_id FROM {s}.contexts WHERE id = %(id)s",
    "checkpoint": "WITH v AS (UPDATE {s}.contexts SET version = %(v)s, updated_at = %(u)s WHERE id = %(id)s), "
                  "d AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s) "
                  "DELETE FROM {s}.journal WHERE context_id = %(id)s",
    "snapshot": "INSERT INTO {s}.snapshots (context_id, version, blob) VALUES (%(id)s, %(v)s, %(blob)s) "
                "ON CONFLICT (context_id, version) DO UPDATE SET blob = EXCLUDED.blob",
    "rp_delete": "DELETE FROM {s}.recovery_points WHERE context_id = %(id)s AND rp_id = %(rp)s",
    # starts_with keeps '%' and '_' in ids literal; the range condition lets the primary key help
    "list": "SELECT id FROM {s}.contexts WHERE id >= %(p)s AND starts_with(id, %(p)s) ORDER BY id",
    "count": "SELECT count(*) FROM {s}.contexts",
    "rps": "SELECT rp_id, version, label, created_at, blob FROM {s}.recovery_points WHERE context_id = %(id)s "
           "ORDER BY rp_id",
    "rp": "SELECT rp_id, version, label, created_at, blob FROM {s}.recovery_points "
          "WHERE context_id = %(id)s AND rp_id = %(rp)s",
    **{f"orphans_{t}": f"SELECT DISTINCT context_id FROM {{s}}.{t} t "  # noqa: S608 - fixed names
                       "WHERE NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = t.context_id)"
       for t in ("snapshots", "journal", "recovery_points")},
    **{f"fix_{t}": f"DELETE FROM {{s}}.{t} WHERE context_id = %(id)s "  # noqa: S608 - fixed names
                   "AND NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = %(id)s)"
       for t in ("snapshots", "journal", "recovery_points", "quarantine")},
    "orphans_quarantine": "SELECT DISTINCT context_id FROM {s}.quarantine t "
                          "WHERE NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = t.context_id)",
    "head": "SELECT version, next_rp_id FROM {s}.contexts WHERE id = %(id)s",
    "snapshot_rows": "SELECT version, blob FROM {s}.snapshots WHERE context_id = %(id)s ORDER BY version",
    "snapshot_versions": "SELECT version FROM {s}.snapshots WHERE context_id = %(id)s ORDER BY version",
    "snapshot_row": "SELECT blob FROM {s}.snapshots WHERE context_id = %(id)s AND version = %(v)s",
    "journal_rows": "SELECT version, blob FROM {s}.journal WHERE context_id = %(id)s AND version > %(after)s "
                    "AND version <= %(upto)s ORDER BY version",
    "quarantined": "SELECT count(*) FROM {s}.quarantine",
    "set_ttl": "UPDATE {s}.contexts SET ttl = %(ttl)s WHERE id = %(id)s RETURNING id",
    "expired": "SELECT id FROM {s}.contexts WHERE updated_at + coalesce(ttl, %(d)s::float8) < %(now)s::float8 "
               "ORDER BY updated_at LIMIT %(limit)s",
    "has_ttl": "SELECT 1 FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attname = 'ttl' AND NOT attisdropped",
    "add_ttl": "ALTER TABLE {s}.contexts ADD COLUMN IF NOT EXISTS ttl double precision",
    "has_quarantine": "SELECT to_regclass(%(t)s) IS NOT NULL",
    "quarantine_delete": "DELETE FROM {s}.quarantine WHERE context_id = %(id)s",
    "quarantine_snapshot": _QUARANTINE_ROW.replace("{table}", "snapshots").replace("{key}", "version"),
    "quarantine_journal": _QUARANTINE_ROW.replace("{table}", "journal").replace("{key}", "version"),
    "quarantine_recovery_point": _QUARANTINE_ROW.replace("{table}", "recovery_points").replace("{key}", "rp_id"),
    "snapshot_delete": "DELETE FROM {s}.snapshots WHERE context_id = %(id)s AND version = %(v)s",
    "snapshot_delete_all": "DELETE FROM {s}.snapshots WHERE context_id = %(id)s",
    "journal_delete": "DELETE FROM {s}.journal WHERE context_id = %(id)s AND version = %(v)s",
    "journal_delete_all": "DELETE FROM {s}.journal WHERE context_id = %(id)s",
    "rp_blob": "UPDATE {s}.recovery_points SET blob = %(blob)s WHERE context_id = %(id)s AND rp_id = %(rp)s",
    "set_version": "UPDATE {s}.contexts SET version = %(v)s, updated_at = %(u)s WHERE id = %(id)s",
    "set_next_rp": "UPDATE {s}.contexts SET next_rp_id = %(n)s WHERE id = %(id)s",
}
