"""Opening a PostgreSQL store on a server that answers but refuses: at once, with the server's words."""

from __future__ import annotations

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
