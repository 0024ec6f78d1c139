"""The measuring scripts under docs/ that the README and docs/design.md quote still run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_design_floor_script_prints_a_ratio_for_each_variant(tmp_path: Path) -> None:
    script = ROOT / "docs" / "measure_design_floor.py"
    done = subprocess.run([sys.executable, str(script), "1"], cwd=tmp_path, capture_output=True, text=True,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = re.findall(r"^(.+?) +(\d+\.\d\d) of the floor's rate \(median of 1 rounds", done.stdout, re.MULTILINE)
    names = [name for name, _ in found]
    expected = ["one hop", "two hops", "two hops, bare threads", "hoard's store, no thread", "hoard"]
    assert names[:5] == expected, done.stdout
    assert names[5:] in ([], ["diskcache Cache.set"]), done.stdout  # the peer, when the bench extra is installed
    assert all(float(ratio) > 0 for _, ratio in found)
    assert list(tmp_path.iterdir()) == []  # its stores are removed


def test_the_wakeup_script_prints_a_latency_for_each_idle_time_and_leaves_no_thread(tmp_path: Path) -> None:
    script = ROOT / "docs" / "measure_wakeups.py"
    done = subprocess.run([sys.executable, str(script), "20"], cwd=tmp_path, capture_output=True, text=True,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr  # (a thread left behind would hang it: it is not a daemon)
    rows = [line for line in done.stdout.splitlines() if line.startswith(("waker sleeps", "waker busy"))]
    assert len(rows) in (2, 4), done.stdout  # any CPU, and pinned when there are two or more
    for row in rows:
        found = re.findall(r"(\d+) us idle: +(\d+\.\d) / +(\d+\.\d)", row)
        assert [int(idle) for idle, _, _ in found] == [0, 50, 250, 1000], row
        assert all(0 < float(median) <= float(p90) for _, median, p90 in found), row
    assert list(tmp_path.iterdir()) == []


def test_the_design_floor_script_measures_postgresql_too_and_drops_its_schema(tmp_path: Path) -> None:
    import psycopg  # noqa: PLC0415 - present where the server is

    from tests.pg import PG_DSN, require_server  # noqa: PLC0415

    require_server(PG_DSN)

    def schemas() -> set[str]:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hoard_floor_%'").fetchall()
        return {r[0] for r in rows}
    before = schemas()
    script = ROOT / "docs" / "measure_design_floor.py"
    done = subprocess.run([sys.executable, str(script), "1", "--postgres", PG_DSN], cwd=tmp_path,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    tail = done.stdout.split("PostgreSQL (the floor: one autocommitted INSERT by psycopg)\n")[1]
    found = re.findall(r"^(.+?) +(\d+\.\d\d) of the floor's rate \(median of 1 rounds", tail, re.MULTILINE)
    assert [name for name, _ in found] == ["hoard's store, no thread", "hoard"], done.stdout
    assert all(float(ratio) > 0 for _, ratio in found)
    assert schemas() == before
