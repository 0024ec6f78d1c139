"""The `hoard` command line (``hoard --help``). `main` is the console script's entry point."""

from ._main import cli as cli
from ._main import main as main

__all__ = ["cli", "main"]
