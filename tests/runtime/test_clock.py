"""An injected clock is checked where it is used: a time no record can hold is refused before
anything changes, never stored as ``null`` under an acknowledged change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hoard import ConfigError, ContextAdapterConfig, ContextManagerConfig, open_system


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, None, "now", 1e300, True])
def test_a_clock_returning_no_usable_time_refuses_the_change(store_path: Path, bad: object) -> None:
    # a clock returning inf had its change acknowledged and stored with "at": null: the journal and
    # feed entries were unreadable (CorruptStateError), and a restart lost the write
    box: dict[str, object] = {"now": 1_000.0}
    cfg = ContextManagerConfig(clock=lambda: box["now"])  # type: ignore[arg-type,return-value]
    with open_system(store_path, manager_config=cfg,
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        t = s.adapter.activate("c")
        assert t.set("k", 0) == 2
        box["now"] = bad
        with pytest.raises(ConfigError, match="clock"):
            t.set("k", 1)
        assert (t.version, t.get("k")) == (2, 0)
        box["now"] = 1_001.0
        assert t.set("k", 2) == 3
        assert [h.version for h in s.manager.history("c")] == [2, 3]
    with open_system(store_path, adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        t = s.adapter.activate("c")
        assert (t.version, t.get("k")) == (3, 2)
