"""Reliability tests: kill -9, fault injection, property tests and fuzzing (issue 3).

Variants marked ``slow`` (hundreds of kills, thousands of examples) are skipped unless the run selects
them with ``-m slow`` (or sets ``HOARD_SLOW=1``); the default run keeps to about a minute and a half
(about half of it the PostgreSQL variants).

The PostgreSQL variants use the server fixtures of tests/pg.py (a schema per test, dropped afterwards;
skipped with the reason when no server answers, failed under ``CI=true``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("markexpr", "") or ""
    if "slow" in markexpr or os.environ.get("HOARD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow variant: run with -m slow (or HOARD_SLOW=1)")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
