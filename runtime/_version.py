"""hoard's distribution name and version.

hoard is installed from the distribution ``hoard-contexts`` (the name ``hoard`` on PyPI belongs to an
unrelated project) and imported as ``hoard``; every version lookup goes through this module so that
it never reads another distribution's metadata.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "__version__"]

DISTRIBUTION = "hoard-contexts"

try:
    __version__: str = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
