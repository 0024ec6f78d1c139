"""Helpers for the attacks on the edges (issue 11): a small real filesystem that can be filled up.

`SmallDisk` mounts a `tmpfs` of a given size (root only) and unmounts it when closed; `fill()` takes
every free byte with a filler file and `free()` deletes it again. Where mounting is not permitted the
fixture skips with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["SmallDisk", "small_disk"]


class SmallDisk:
    """A mounted tmpfs at `path`; `fill()` makes it full, `free()` gives the space back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write to a filler file until ENOSPC; returns the bytes taken. The disk is full afterwards."""
        taken = 0
        chunk = b"\xff" * 65536
        with open(self.filler, "ab", buffering=0) as f:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        taken += f.write(chunk[:size])
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return taken

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of `size` at `where` (created); unmount it afterwards, whatever happened."""
    where.mkdir(parents=True, exist_ok=True)
    # fixed arguments; mount is looked up on PATH as root's shell would
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for the disk-full tests (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)  # noqa: S603, S607
