"""hoard: named contexts (key/value state with metadata and a version) kept alive, consistent and
durable inside long-running programs.

Start with `open_system(path)` (SQLite) or `create_manager()` / `create_adapter()` (memory)::

    from hoard import open_system
    with open_system("state.db") as system:
        t = system.adapter.activate("cart-42")
        v = t.set("user", {"name": "ana"})
"""

import logging as _logging

from hoard.actors import ChangesLost as ChangesLost
from hoard.actors import ContextActivated as ContextActivated
from hoard.actors import ContextCreated as ContextCreated
from hoard.actors import ContextDeactivated as ContextDeactivated
from hoard.actors import ContextDeleted as ContextDeleted
from hoard.actors import ContextEvent as ContextEvent
from hoard.actors import ContextFailed as ContextFailed
from hoard.actors import ContextRestarted as ContextRestarted
from hoard.actors import ContextStatus as ContextStatus
from hoard.actors import CorruptionRecovered as CorruptionRecovered
from hoard.actors import DeactivationReason as DeactivationReason
from hoard.actors import DeadLetter as DeadLetter
from hoard.actors import MetadataChanged as MetadataChanged
from hoard.actors import RecoveryPointCreated as RecoveryPointCreated
from hoard.actors import RecoveryPointDeleted as RecoveryPointDeleted
from hoard.actors import RemoteChange as RemoteChange
from hoard.actors import Restored as Restored
from hoard.actors import StateChanged as StateChanged
from hoard.actors import SubscriberOverflow as SubscriberOverflow
from hoard.actors import Switched as Switched
from hoard.actors import Transacted as Transacted
from hoard.actors import acting_as as acting_as
from hoard.storage import CallNotStartedError as CallNotStartedError
from hoard.storage import CallOutcomeUnknownError as CallOutcomeUnknownError
from hoard.storage import CapacityError as CapacityError
from hoard.storage import ConfigError as ConfigError
from hoard.storage import ContextCrashedError as ContextCrashedError
from hoard.storage import ContextExistsError as ContextExistsError
from hoard.storage import ContextFailedError as ContextFailedError
from hoard.storage import ContextLockedError as ContextLockedError
from hoard.storage import ContextNotFoundError as ContextNotFoundError
from hoard.storage import ContextOwnedElsewhereError as ContextOwnedElsewhereError
from hoard.storage import ContextState as ContextState
from hoard.storage import ContextTimeoutError as ContextTimeoutError
from hoard.storage import CorruptStateError as CorruptStateError
from hoard.storage import FeedEntry as FeedEntry
from hoard.storage import FeedTruncatedError as FeedTruncatedError
from hoard.storage import FencedOffError as FencedOffError
from hoard.storage import FrozenDict as FrozenDict
from hoard.storage import FrozenList as FrozenList
from hoard.storage import HoardError as HoardError
from hoard.storage import InvalidContextIdError as InvalidContextIdError
from hoard.storage import InvalidMessageError as InvalidMessageError
from hoard.storage import InvalidValueError as InvalidValueError
from hoard.storage import MemoryStore as MemoryStore
from hoard.storage import NoCurrentContextError as NoCurrentContextError
from hoard.storage import OwnerIdInUseError as OwnerIdInUseError
from hoard.storage import PersistenceError as PersistenceError
from hoard.storage import PostgresStore as PostgresStore
from hoard.storage import RecoveryPoint as RecoveryPoint
from hoard.storage import RecoveryPointNotFoundError as RecoveryPointNotFoundError
from hoard.storage import RecoveryReport as RecoveryReport
from hoard.storage import Schema as Schema
from hoard.storage import SchemaMigrationError as SchemaMigrationError
from hoard.storage import SchemaNameMismatchError as SchemaNameMismatchError
from hoard.storage import SchemaNameWarning as SchemaNameWarning
from hoard.storage import SchemaValidationError as SchemaValidationError
from hoard.storage import SQLiteStore as SQLiteStore
from hoard.storage import StateNotSavedError as StateNotSavedError
from hoard.storage import Store as Store
from hoard.storage import StoreLockedError as StoreLockedError
from hoard.storage import SystemStoppedError as SystemStoppedError
from hoard.storage import VersionConflictError as VersionConflictError
from hoard.storage import VersionNotStoredError as VersionNotStoredError
from hoard.storage import thaw as thaw

from ._adapter import ContextAdapter as ContextAdapter
from ._bridges import ApplierStats as ApplierStats
from ._bridges import BridgeError as BridgeError
from ._bridges import BrokerUnavailableError as BrokerUnavailableError
from ._bridges import CommandApplier as CommandApplier
from ._bridges import InvalidCommandError as InvalidCommandError
from ._bridges import Relay as Relay
from ._bridges import RelayLag as RelayLag
from ._bridges import UnpublishableChangeError as UnpublishableChangeError
from ._config import ContextAdapterConfig as ContextAdapterConfig
from ._config import ContextManagerConfig as ContextManagerConfig
from ._daemon import run_forever as run_forever
from ._events import Subscription as Subscription
from ._factory import create_adapter as create_adapter
from ._factory import create_adapter_with_config as create_adapter_with_config
from ._factory import create_manager as create_manager
from ._factory import create_manager_with_config as create_manager_with_config
from ._feed import ChangeStream as ChangeStream
from ._feed import FeedConsumer as FeedConsumer
from ._forward import BoundTransaction as BoundTransaction
from ._forward import NotForwardableError as NotForwardableError
from ._forward import RegisteredTransaction as RegisteredTransaction
from ._history import Diff as Diff
from ._history import HistoryEntry as HistoryEntry
from ._manager import ContextManager as ContextManager
from ._manager import Ownership as Ownership
from ._metrics import Metrics as Metrics
from ._metrics import register_prometheus as register_prometheus
from ._ref import ContextRef as ContextRef
from ._system import ContextSystem as ContextSystem
from ._system import open_system as open_system
from ._tracker import ContextTracker as ContextTracker
from ._tracker import ContextTrackerFactory as ContextTrackerFactory
from ._tracker import Pending as Pending
from ._version import __version__ as __version__

ContextSnapshot = RecoveryPoint  # the name the original system used

_logging.getLogger("actors").addHandler(_logging.NullHandler())
_logging.getLogger("storage").addHandler(_logging.NullHandler())
_logging.getLogger("runtime").addHandler(_logging.NullHandler())

__all__ = [
    "ApplierStats",
    "BoundTransaction",
    "BridgeError",
    "BrokerUnavailableError",
    "CallNotStartedError",
    "CallOutcomeUnknownError",
    "CapacityError",
    "ChangeStream",
    "ChangesLost",
    "CommandApplier",
    "ConfigError",
    "ContextActivated",
    "ContextAdapter",
    "ContextAdapterConfig",
    "ContextCrashedError",
    "ContextCreated",
    "ContextDeactivated",
    "ContextDeleted",
    "ContextEvent",
    "ContextExistsError",
    "ContextFailed",
    "ContextFailedError",
    "ContextLockedError",
    "ContextManager",
    "ContextManagerConfig",
    "ContextNotFoundError",
    "ContextOwnedElsewhereError",
    "ContextRef",
    "ContextRestarted",
    "ContextSnapshot",
    "ContextState",
    "ContextStatus",
    "ContextSystem",
    "ContextTimeoutError",
    "ContextTracker",
    "ContextTrackerFactory",
    "CorruptStateError",
    "CorruptionRecovered",
    "DeactivationReason",
    "DeadLetter",
    "Diff",
    "FeedConsumer",
    "FeedEntry",
    "FeedTruncatedError",
    "FencedOffError",
    "FrozenDict",
    "FrozenList",
    "HistoryEntry",
    "HoardError",
    "InvalidCommandError",
    "InvalidContextIdError",
    "InvalidMessageError",
    "InvalidValueError",
    "MemoryStore",
    "MetadataChanged",
    "Metrics",
    "NoCurrentContextError",
    "NotForwardableError",
    "OwnerIdInUseError",
    "Ownership",
    "Pending",
    "PersistenceError",
    "PostgresStore",
    "RecoveryPoint",
    "RecoveryPointCreated",
    "RecoveryPointDeleted",
    "RecoveryPointNotFoundError",
    "RecoveryReport",
    "RegisteredTransaction",
    "Relay",
    "RelayLag",
    "RemoteChange",
    "Restored",
    "SQLiteStore",
    "Schema",
    "SchemaMigrationError",
    "SchemaNameMismatchError",
    "SchemaNameWarning",
    "SchemaValidationError",
    "StateChanged",
    "StateNotSavedError",
    "Store",
    "StoreLockedError",
    "SubscriberOverflow",
    "Subscription",
    "Switched",
    "SystemStoppedError",
    "Transacted",
    "UnpublishableChangeError",
    "VersionConflictError",
    "VersionNotStoredError",
    "acting_as",
    "create_adapter",
    "create_adapter_with_config",
    "create_manager",
    "create_manager_with_config",
    "open_system",
    "register_prometheus",
    "run_forever",
    "thaw",
]
