"""Storage tests use the PostgreSQL server fixtures of tests/pg.py (`pg_dsn`, `pg_schema`,
`make_pg_store`; registered for every directory by tests/conftest.py). Without a server at
127.0.0.1:5432 those tests skip with the reason; under ``CI=true`` they fail.
"""
