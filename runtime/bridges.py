"""The broker bridges' public face for those who extend them: the wire formats (format 1) and their
parsers, the two backend protocols (`Publisher`, `CommandSource`) a broker of one's own implements
(pass it as ``Relay(..., publisher=)`` / ``CommandApplier(..., source=)``), and the URL factories.
`Relay`, `CommandApplier` and the bridges' errors are also exported by `hoard` itself."""

from . import _bridges
from ._bridges import *  # noqa: F403 - every name of the package's one list, below

__all__ = _bridges.__all__
