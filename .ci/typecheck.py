#!/usr/bin/env python3
"""mypy --strict over the three packages under the names they install as: hoard, hoard.actors,
hoard.storage.

mypy cannot follow setuptools' editable finder for a package-dir mapping (runtime/ -> hoard), and
checking the folders under their own names would type-check imports that no user can write. So this
lays out the installed shape as symlinks in a temporary folder (hoard/<runtime files>, hoard/actors,
hoard/storage), runs ``mypy -p hoard`` there with pyproject's configuration, and prints mypy's
report with the repository's paths (runtime/..., actors/..., storage/...). Exit status: mypy's.

    .venv/bin/python .ci/typecheck.py [extra mypy options]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("actors", "storage")  # hoard/actors -> actors/, hoard/storage -> storage/


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="hoard-typecheck-") as tmp:
        package = Path(tmp) / "hoard"
        package.mkdir()
        for entry in sorted((ROOT / "runtime").iterdir()):
            if entry.name != "__pycache__":
                (package / entry.name).symlink_to(entry)
        for name in SUBPACKAGES:
            (package / name).symlink_to(ROOT / name, target_is_directory=True)
        done = subprocess.run(  # noqa: S603 - runs our own interpreter/tools with fixed arguments
            [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
             "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "hoard", *argv],
            cwd=tmp, capture_output=True, text=True, check=False)
    sub = "|".join(SUBPACKAGES)
    for stream, text in ((sys.stdout, done.stdout), (sys.stderr, done.stderr)):
        in_repo = re.sub(rf"(?m)^hoard/({sub})/", r"\1/", text)
        stream.write(re.sub(r"(?m)^hoard/", "runtime/", in_repo))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
