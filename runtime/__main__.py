"""``python -m hoard``: the same as the `hoard` console script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
