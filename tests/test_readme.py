"""The README is true: every Python snippet runs, and runs again in the same folder (a reader tries
them twice); its set-up commands are what CI runs; its lists and figures match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hoard import DeactivationReason

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(code: str, name: str) -> None:
    exec(compile(code, name, "exec"), {})  # noqa: S102 - the README's own examples


def test_the_readme_has_snippets() -> None:
    assert len(_snippets()) >= 3


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs_twice_in_the_same_folder(index: int, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for n, earlier in enumerate(_snippets()[:index]):  # later snippets may build on the files earlier ones made
        _run(earlier, f"README snippet {n} (setup of {index})")
    for run in (1, 2):  # no hard-coded versions, no create that fails the second time
        _run(_snippets()[index], f"README snippet {index} (run {run})")


def test_the_whole_readme_runs_twice_in_the_same_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for run in (1, 2):
        for n, snippet in enumerate(_snippets()):
            _run(snippet, f"README snippet {n} (pass {run})")


def _setup_commands() -> list[str]:
    section = README.read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def test_readme_commands_match_ci() -> None:
    demo, tests = _setup_commands()
    assert demo.endswith("hoard demo") and "\n" not in demo
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_commands  # .ci/run runs the README's test command exactly


def test_the_readme_lists_every_deactivation_reason() -> None:
    text = " ".join(README.read_text().split())
    listed = text.split("`ContextDeactivated` (`reason`", 1)[1].split("`StateChanged`", 1)[0]
    missing = [r.value for r in DeactivationReason if r.value not in listed]
    assert missing == []


def test_the_readme_states_the_sweep_interval_of_its_example() -> None:
    """The README's example sets idle_timeout=600 and ttl=30 days; the interval rule is the one
    `ContextAdapterConfig.maintenance_interval` documents (a quarter of the shorter, 50 ms..30 s)."""
    text = README.read_text()
    assert "ContextAdapterConfig(idle_timeout=600, ttl=30 * 86400)" in text
    (stated,) = re.findall(r"the background sweep does this every (\d+(?:\.\d+)?) s", text)
    assert float(stated) == min(30.0, max(0.05, min(600, 30 * 86400) / 4))


def test_install_hints_name_our_distribution() -> None:
    """`hoard` on the package registry is another project: every hint names ours (hoard-contexts)."""
    wrong = []
    for path in [README, *ROOT.glob("docs/*.md"), *ROOT.glob("runtime/**/*.py"), *ROOT.glob("actors/*.py"),
                 *ROOT.glob("storage/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install\s+['\"]?hoard\[", line):  # an extra of the other project
                wrong.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert wrong == []


def test_the_group_commit_figure_is_one_measured_figure_with_its_command() -> None:
    """README and docs/design.md state the same figure, and the command that measured it exists."""
    figures = set()
    for path in (README, ROOT / "docs" / "design.md"):
        text = " ".join(path.read_text().split())
        found = re.findall(r"16 writers on 16 contexts get (\d+(?:\.\d+)?)x", text)
        assert len(found) == 1, path
        assert "docs/measure_group_commit.py" in text, path
        figures.add(found[0])
    assert len(figures) == 1
    assert (ROOT / "docs" / "measure_group_commit.py").is_file()


def test_the_commands_the_readme_shows_exist() -> None:
    from hoard.cli import cli  # noqa: PLC0415

    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r"\bhoard (\w+) ", section))
    assert shown and shown <= set(cli.commands), shown - set(cli.commands)
