"""Opening a PostgreSQL store on a server that answers but refuses: at once, with the server's words."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from hoard import open_system
from hoard.storage import PersistenceError, PostgresStore
from tests.pg import url_for

# a connect_timeout far beyond this test's own timeout: an open that waited for it would fail the test
PATIENT = 3600.0


def _missing_database(dsn: str) -> tuple[str, str]:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415 - needs the server's extra

    name = f"nodb_{uuid.uuid4().hex[:8]}"
    return make_conninfo(**{**conninfo_to_dict(dsn), "dbname": name}), name


@pytest.mark.timeout(60)
def test_a_database_that_does_not_exist_fails_the_open_at_once_with_the_servers_message(pg_dsn: str) -> None:
    dsn, name = _missing_database(pg_dsn)
    store = PostgresStore(dsn, connect_timeout=PATIENT)
    with pytest.raises(PersistenceError) as caught:
        store.open()
    message = str(caught.value)
    assert f'database "{name}" does not exist' in message
    assert "within" not in message and "is the server up" not in message  # not the timeout's guess
    store.close()


@pytest.mark.timeout(60)
def test_open_system_on_a_url_naming_a_missing_database_says_so(pg_dsn: str) -> None:
    dsn, name = _missing_database(pg_dsn)
    with pytest.raises(PersistenceError, match=f'database "{name}" does not exist'):
        open_system(url_for(dsn, "hoard"))


def test_importing_hoard_leaves_the_postgres_extra_unimported_until_a_postgres_store_is_made() -> None:
    """psycopg and its pool took about 130 ms of the 490 ms of `import hoard`, for every program."""
    code = ("import sys, hoard; print('psycopg' in sys.modules, 'psycopg_pool' in sys.modules); "
            "from hoard.storage import PostgresStore; PostgresStore('host=127.0.0.1 dbname=x'); "
            "print('psycopg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603 - our own interpreter, fixed code
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


def test_the_libpq_numbers_written_out_are_psycopgs() -> None:
    pq = pytest.importorskip("psycopg").pq
    from hoard.storage import _postgres  # noqa: PLC0415 - its private constants, checked against psycopg

    assert (_postgres._TUPLES_OK, _postgres._COMMAND_OK) == (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)  # noqa: SLF001
    assert _postgres._SQLSTATE == pq.DiagnosticField.SQLSTATE  # noqa: SLF001
