"""``python -m hoard.cli``: the same as the `hoard` console script."""

from ._main import main

main()
