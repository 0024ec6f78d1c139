"""hoard: named contexts (key/value state with metadata and a version) kept alive, consistent and
durable inside long-running programs.

Start with `open_system(path)` (SQLite) or `create_manager()` / `create_adapter()` (memory)::

    from runtime import open_system
    with open_system("state.db") as system:
        t = system.adapter.activate("cart-42")
        v = t.set("user", {"name": "ana"})
"""

import logging as _logging

from actors import ContextActivated as ContextActivated
from actors import ContextCreated as ContextCreated
from actors import ContextDeactivated as ContextDeactivated
from actors import ContextDeleted as ContextDeleted
from actors import ContextEvent as ContextEvent
from actors import ContextFailed as ContextFailed
from actors import ContextRestarted as ContextRestarted
from actors import ContextStatus as ContextStatus
from actors import CorruptionRecovered as CorruptionRecovered
from actors import MetadataChanged as MetadataChanged
from actors import RecoveryPointCreated as RecoveryPointCreated
from actors import RecoveryPointDeleted as RecoveryPointDeleted
from actors import Restored as Restored
from actors import StateChanged as StateChanged
from actors import Switched as Switched
from actors import RemoteChange as RemoteChange
from actors import DeactivationReason as DeactivationReason
from storage import CapacityError as CapacityError
from storage import ConfigError as ConfigError
from storage import ContextCrashedError as ContextCrashedError
from storage import ContextExistsError as ContextExistsError
from storage import ContextFailedError as ContextFailedError
from storage import ContextNotFoundError as ContextNotFoundError
from storage import ContextOwnedElsewhereError as ContextOwnedElsewhereError
from storage import ContextState as ContextState
from storage import ContextTimeoutError as ContextTimeoutError
from storage import CorruptStateError as CorruptStateError
from storage import FrozenDict as FrozenDict
from storage import FrozenList as FrozenList
from storage import HoardError as HoardError
from storage import InvalidContextIdError as InvalidContextIdError
from storage import InvalidValueError as InvalidValueError
from storage import MemoryStore as MemoryStore
from storage import NoCurrentContextError as NoCurrentContextError
from storage import PersistenceError as PersistenceError
from storage import FencedOffError as FencedOffError
from storage import PostgresStore as PostgresStore
from storage import RecoveryPoint as RecoveryPoint
from storage import RecoveryPointNotFoundError as RecoveryPointNotFoundError
from storage import RecoveryReport as RecoveryReport
from storage import Schema as Schema
from storage import SchemaMigrationError as SchemaMigrationError
from storage import SchemaValidationError as SchemaValidationError
from storage import SQLiteStore as SQLiteStore
from storage import Store as Store
from storage import StoreLockedError as StoreLockedError
from storage import SystemStoppedError as SystemStoppedError
from storage import VersionConflictError as VersionConflictError
from storage import thaw as thaw

from ._adapter import ContextAdapter as ContextAdapter
from ._config import ContextAdapterConfig as ContextAdapterConfig
from ._config import ContextManagerConfig as ContextManagerConfig
from ._daemon import run_forever as run_forever
from ._events import Subscription as Subscription
from ._factory import create_adapter as create_adapter
from ._factory import create_adapter_with_config as create_adapter_with_config
from ._factory import create_manager as create_manager
from ._factory import create_manager_with_config as create_manager_with_config
from ._manager import ContextManager as ContextManager
from ._metrics import Metrics as Metrics
from ._metrics import register_prometheus as register_prometheus
from ._system import ContextSystem as ContextSystem
from ._system import open_system as open_system
from ._tracker import ContextTracker as ContextTracker
from ._tracker import ContextTrackerFactory as ContextTrackerFactory

ContextSnapshot = RecoveryPoint  # the name the original system used

_logging.getLogger("actors").addHandler(_logging.NullHandler())
_logging.getLogger("storage").addHandler(_logging.NullHandler())
_logging.getLogger("runtime").addHandler(_logging.NullHandler())

__all__ = [
    "ContextActivated", "ContextCreated", "ContextDeactivated", "ContextDeleted", "ContextEvent", "ContextFailed",
    "ContextRestarted", "CorruptionRecovered", "MetadataChanged", "RecoveryPointCreated", "RecoveryPointDeleted",
    "Restored", "Schema", "SchemaMigrationError", "SchemaValidationError", "StateChanged", "Subscription",
    "Switched", "Metrics", "RecoveryReport", "register_prometheus",
    "CapacityError", "ConfigError", "ContextAdapter", "ContextCrashedError", "ContextAdapterConfig", "ContextExistsError",
    "ContextFailedError", "ContextManager", "ContextManagerConfig", "ContextNotFoundError", "ContextSnapshot",
    "ContextState", "ContextStatus", "ContextSystem", "ContextTimeoutError", "ContextTracker",
    "ContextTrackerFactory", "CorruptStateError", "DeactivationReason", "FrozenDict", "FrozenList", "HoardError",
    "InvalidContextIdError", "InvalidValueError", "MemoryStore", "NoCurrentContextError", "PersistenceError",
    "RecoveryPoint", "RecoveryPointNotFoundError", "SQLiteStore", "Store", "StoreLockedError",
    "SystemStoppedError", "VersionConflictError", "create_adapter", "create_adapter_with_config",
    "create_manager", "create_manager_with_config", "open_system", "run_forever", "thaw",
    "RemoteChange", "ContextOwnedElsewhereError", "FencedOffError", "PostgresStore",
]
