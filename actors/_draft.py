"""`Draft`: the mutable view of a context that `transact(fn)` hands to `fn`, inside the actor.

Reads see the draft's own writes. Reading a dict or list value gives a mutable copy that is part of
the draft, so ``draft["cart"]["items"].append(x)`` works. Nothing is checked or applied until `fn`
returns; then every written value is validated and frozen and the whole draft becomes one change. If
`fn` raises (or a value is invalid) nothing changes. Only the actor's thread touches a draft, and
using it after `fn` returned raises `RuntimeError`.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import immutables

from hoard.storage import thaw

__all__ = ["Draft"]

_MISSING = object()


class Draft(MutableMapping[str, Any]):
    """Mutable draft of a context's data (and `metadata`, a plain dict) inside a transaction."""

    def __init__(self, context_id: str, version: int, data: immutables.Map[str, Any],
                 metadata: immutables.Map[str, Any]) -> None:
        self.context_id = context_id
        self.version = version
        self._base = data
        self._sets: dict[str, Any] = {}
        self._dels: set[str] = set()
        self.metadata: dict[str, Any] = thaw(dict(metadata))
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("this transaction draft is finished; it cannot be used after fn returned")

    def __getitem__(self, key: str) -> Any:
        self._check()
        if key in self._sets:
            return self._sets[key]
        if key in self._dels:
            raise KeyError(key)
        value = self._base[key]
        if isinstance(value, (dict, list)):
            value = thaw(value)
            self._sets[key] = value  # the caller may mutate it in place: it is part of the draft now
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._check()
        self._sets[key] = value
        self._dels.discard(key)

    def __delitem__(self, key: str) -> None:
        self._check()
        if key not in self:
            raise KeyError(key)
        self._sets.pop(key, None)
        if key in self._base:
            self._dels.add(key)

    def __contains__(self, key: object) -> bool:
        if key in self._sets:
            return True
        return key not in self._dels and key in self._base

    def __iter__(self) -> Iterator[str]:
        self._check()
        for k in self._base:
            if k not in self._dels and k not in self._sets:
                yield k
        yield from list(self._sets)

    def __len__(self) -> int:
        return len(self._base) - len(self._dels) + sum(1 for k in self._sets if k not in self._base)

    def __repr__(self) -> str:
        return f"<Draft of {self.context_id!r} at v{self.version}: {len(self)} keys>"

    def finish(self) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]:
        """Close the draft; return (keys written, keys removed, new metadata), not yet validated."""
        self._open = False
        return self._sets, tuple(k for k in self._dels if k in self._base), self.metadata
