"""Every Python snippet in the README runs, in a fresh directory, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_snippets() -> None:
    assert len(_snippets()) >= 3


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for earlier in _snippets()[:index]:  # later snippets may build on the files earlier ones made
        exec(compile(earlier, f"README snippet (setup) {index}", "exec"), {})  # noqa: S102
    exec(compile(_snippets()[index], f"README snippet {index}", "exec"), {})  # noqa: S102


def test_readme_commands_match_ci() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pip install -e . && hoard demo" in text
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest" in text
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest" in ci
