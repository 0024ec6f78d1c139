"""hoard as a user gets it: one wheel, one top-level package, living beside other people's code.

Builds the wheel from a copy of the sources, installs it into a fresh virtual environment (no system
site-packages) that already holds three foreign packages named ``storage``, ``runtime`` and
``actors``, and from a working folder holding the user's own ``storage.py`` and ``runtime/``
package opens a system, writes, reopens, reads and runs ``python -m hoard demo``; everyone's modules
stay theirs. Also: the README's two set-up commands are the ones `.ci/run` and this suite rely on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "hoard_contexts"  # the wheel's file name form of hoard-contexts
_NETWORK = ("Could not find a version", "No matching distribution", "Failed to establish a new connection",
            "Temporary failure in name resolution", "Network is unreachable")


def _run(args: list[str | Path], *, cwd: Path, timeout: float = 240) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                          check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(s in output for s in _NETWORK) and os.environ.get("CI") != "true":
            pytest.skip(f"the package index is unreachable (pip needs it for build and runtime dependencies): "
                        f"{output.strip().splitlines()[-1]}")
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}")
    return done.stdout


def _foreign(folder: Path, name: str) -> Path:
    """A tiny installable project whose one package is named `name` (like the real ones on PyPI)."""
    project = folder / f"foreign-{name}"
    (project / name).mkdir(parents=True)
    (project / name / "__init__.py").write_text(f"OWNER = 'foreign {name}'\n")
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "foreign-{name}"
        version = "1.0"

        [tool.setuptools]
        packages = ["{name}"]
        """))
    return project


def _wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"  # a copy: the build leaves build/ and egg-info, not in the shared tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("runtime", "actors", "storage"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, src], cwd=tmp_path)
    (wheel,) = out.glob(f"{DISTRIBUTION}-*.whl")
    return wheel


APP = '''
import sys
from pathlib import Path

from hoard import open_system

with open_system("state.db") as system:
    system.adapter.activate("app").set("n", 41)
with open_system("state.db") as system:
    n = system.adapter.activate("app").get("n")
    assert n == 41, n

import actors, runtime, storage  # the user's storage.py and runtime/, the foreign actors
import hoard, hoard.actors, hoard.storage

assert storage.OWNER == "user storage", storage.__file__
assert runtime.OWNER == "user runtime", runtime.__file__
assert actors.OWNER == "foreign actors", actors.__file__
assert Path(hoard.__file__).parent.name == "hoard" and "site-packages" in hoard.__file__, hoard.__file__
assert hoard.storage.SQLiteStore and hoard.actors.ContextActor
from hoard.storage import _values
assert _values.CFREEZE is not None and "site-packages" in _values.CFREEZE.__file__, _values.CFREEZE
print("app ok", n)
'''

FOREIGN = '''
import actors, runtime, storage
assert (actors.OWNER, runtime.OWNER, storage.OWNER) == ("foreign actors", "foreign runtime", "foreign storage")
import hoard
assert storage.OWNER == "foreign storage"
print("foreign ok")
'''


def test_the_wheel_installs_one_package_beside_foreign_and_user_modules_named_like_ours(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"hoard"}, top
    assert len(top) == 2, top
    # the C freezer is built where a C compiler is (here, and on every CI machine), and lands in place
    assert [n for n in names if n.startswith("hoard/storage/_cfreeze.") and n.endswith(".so")], names
    assert not [n for n in names if n.endswith(".c")], names  # the source stays out of the wheel

    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env)
    py = env / "bin" / "python"
    foreign = [_foreign(tmp_path / "foreign", name) for name in ("storage", "runtime", "actors")]
    # `wheel` first: with it the environment's own setuptools builds the foreign projects, with no
    # isolated build environment each (15 s less); then hoard's wheel and its dependencies
    _run([py, "-m", "pip", "install", "--quiet", "wheel"], cwd=tmp_path)
    _run([py, "-m", "pip", "install", "--quiet", "--no-build-isolation", *foreign], cwd=tmp_path)
    _run([py, "-m", "pip", "install", "--quiet", wheel], cwd=tmp_path)

    work = tmp_path / "work"  # the user's application folder
    (work / "runtime").mkdir(parents=True)
    (work / "storage.py").write_text("OWNER = 'user storage'\n")
    (work / "runtime" / "__init__.py").write_text("OWNER = 'user runtime'\n")
    (work / "app.py").write_text(APP)
    assert "app ok 41" in _run([py, "app.py"], cwd=work)  # the script's folder comes first on sys.path
    demo = _run([py, "-m", "hoard", "demo"], cwd=work)  # -m puts the working folder first, too
    assert "store verifies clean" in demo
    assert "hoard, version" in _run([env / "bin" / "hoard", "--version"], cwd=work)
    assert "foreign ok" in _run([py, "-c", FOREIGN], cwd=tmp_path)


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Set-up"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_ci_runs_the_readmes_test_command_exactly() -> None:
    demo, tests = _setup_commands()
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/hoard demo"
    assert "ruff check" in tests and ".ci/typecheck.py" in tests and tests.endswith("-m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "set -euo pipefail" in ci and 'cd "$(dirname "$0")/.."' in ci
    assert ci[-1] == tests
