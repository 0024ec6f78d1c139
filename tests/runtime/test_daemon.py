"""A daemon hosting hoard stops gracefully on SIGTERM: everything is committed and snapshotted."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from hoard import open_system

DAEMON = r"""
import sys
from hoard import open_system, run_forever, ContextManagerConfig
# deferred with a long window: only the graceful stop can have committed these writes
system = open_system(sys.argv[1], manager_config=ContextManagerConfig(durability="deferred", flush_interval=60))
t = system.adapter.activate("svc")
for i in range(100):
    t.set(f"k{i}", i)
sys.exit(0 if run_forever(system, on_ready=lambda: print("ready", flush=True)) == 15 else 3)
"""


def test_sigterm_stops_the_daemon_gracefully(store_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", DAEMON, str(store_path)], stdout=subprocess.PIPE,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                          text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    with open_system(store_path) as s:
        st = s.manager.get_state("svc")
        assert st.version == 101 and all(st.data[f"k{i}"] == i for i in range(100))


FORGETFUL = r"""
import sys
from hoard import open_system, ContextManagerConfig
system = open_system(sys.argv[1], manager_config=ContextManagerConfig(durability="deferred", flush_interval=60))
t = system.adapter.activate("svc")
for i in range(50):
    t.set(f"k{i}", i)
# no stop(): interpreter exit must neither hang nor lose these deferred writes
"""


def test_a_forgotten_stop_neither_hangs_exit_nor_loses_writes(store_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", FORGETFUL, str(store_path)], timeout=60, check=False)  # noqa: S603 - runs our own interpreter/tools with fixed arguments
    assert proc.returncode == 0
    with open_system(store_path) as s:
        assert s.manager.get_state("svc").version == 51
