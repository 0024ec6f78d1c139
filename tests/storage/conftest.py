"""Storage fixtures: the PostgreSQL server and a throwaway schema per test (`pg_dsn`, `pg_schema`,
`make_pg_store`), defined in tests/pg.py and shared with tests/distributed and tests/reliability.
Without a server at 127.0.0.1:5432 those tests skip with the reason; under ``CI=true`` they fail.
"""

from __future__ import annotations

# the server fixtures (imported to register them here, hence F401)
from tests.pg import make_pg_store, pg_dsn, pg_schema  # noqa: F401
