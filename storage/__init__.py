"""hoard's bottom layer: models, values, codec, stores and errors. No threads, no actors.

Advanced users may use a store directly (`SQLiteStore(path).open()`); everyone else goes through
`runtime`.
"""

from ._codec import FORMAT_VERSION as FORMAT_VERSION
from ._codec import KIND_ARCHIVE as KIND_ARCHIVE
from ._codec import KIND_CHANGE as KIND_CHANGE
from ._codec import KIND_DICTIONARY as KIND_DICTIONARY
from ._codec import KIND_STATE as KIND_STATE
from ._codec import Codec as Codec
from ._codec import make_converter as make_converter
from ._errors import CallNotStartedError as CallNotStartedError
from ._errors import CallOutcomeUnknownError as CallOutcomeUnknownError
from ._errors import CapacityError as CapacityError
from ._errors import ConfigError as ConfigError
from ._errors import ContextCrashedError as ContextCrashedError
from ._errors import ContextExistsError as ContextExistsError
from ._errors import ContextFailedError as ContextFailedError
from ._errors import ContextLockedError as ContextLockedError
from ._errors import ContextNotFoundError as ContextNotFoundError
from ._errors import ContextOwnedElsewhereError as ContextOwnedElsewhereError
from ._errors import ContextTimeoutError as ContextTimeoutError
from ._errors import CorruptStateError as CorruptStateError
from ._errors import FeedTruncatedError as FeedTruncatedError
from ._errors import FencedOffError as FencedOffError
from ._errors import HoardError as HoardError
from ._errors import InvalidContextIdError as InvalidContextIdError
from ._errors import InvalidMessageError as InvalidMessageError
from ._errors import InvalidValueError as InvalidValueError
from ._errors import NoCurrentContextError as NoCurrentContextError
from ._errors import OwnerIdInUseError as OwnerIdInUseError
from ._errors import PersistenceError as PersistenceError
from ._errors import RecoveryPointNotFoundError as RecoveryPointNotFoundError
from ._errors import StateNotSavedError as StateNotSavedError
from ._errors import StoreLockedError as StoreLockedError
from ._errors import SystemStoppedError as SystemStoppedError
from ._errors import VersionConflictError as VersionConflictError
from ._errors import VersionNotStoredError as VersionNotStoredError
from ._errors import shown_repr as shown_repr
from ._feed import FeedEntry as FeedEntry
from ._memory import MemoryStore as MemoryStore
from ._model import Change as Change
from ._model import ContextState as ContextState
from ._model import RecoveryPoint as RecoveryPoint
from ._model import apply_change as apply_change
from ._model import new_state as new_state
from ._open import make_store as make_store
from ._open import open_store as open_store
from ._postgres import PostgresStore as PostgresStore
from ._postgres_listen import ChangeListener as ChangeListener
from ._postgres_listen import ChangeNotice as ChangeNotice
from ._recovery import RecoveryReport as RecoveryReport
from ._recovery import SkippedItem as SkippedItem
from ._retention import HistoryPolicy as HistoryPolicy
from ._schema import SCHEMA_KEY as SCHEMA_KEY
from ._schema import Schema as Schema
from ._schema import SchemaMigrationError as SchemaMigrationError
from ._schema import SchemaNameMismatchError as SchemaNameMismatchError
from ._schema import SchemaNameWarning as SchemaNameWarning
from ._schema import SchemaValidationError as SchemaValidationError
from ._schema import as_schema as as_schema
from ._schema import read_marker as read_marker
from ._sqlite import SQLiteStore as SQLiteStore
from ._store import Append as Append
from ._store import CreateContext as CreateContext
from ._store import DeleteContext as DeleteContext
from ._store import DeleteRecoveryPoint as DeleteRecoveryPoint
from ._store import JournalEntry as JournalEntry
from ._store import Op as Op
from ._store import PutRecoveryPoint as PutRecoveryPoint
from ._store import PutSnapshot as PutSnapshot
from ._store import ReadView as ReadView
from ._store import SetTTL as SetTTL
from ._store import Store as Store
from ._store import StoredContext as StoredContext
from ._store import StoreStats as StoreStats
from ._store import VerifyIssue as VerifyIssue
from ._store import context_of as context_of
from ._values import FIRST_TIME as FIRST_TIME
from ._values import LAST_TIME as LAST_TIME
from ._values import MAX_SECONDS as MAX_SECONDS
from ._values import MAX_STORED_INT as MAX_STORED_INT
from ._values import FrozenDict as FrozenDict
from ._values import FrozenList as FrozenList
from ._values import check_timeout as check_timeout
from ._values import encoded_size as encoded_size
from ._values import freeze_mapping as freeze_mapping
from ._values import freeze_mapping_sized as freeze_mapping_sized
from ._values import freeze_value as freeze_value
from ._values import freeze_value_sized as freeze_value_sized
from ._values import thaw as thaw
from ._values import validate_by as validate_by
from ._values import validate_id as validate_id
from ._values import validate_key as validate_key

__all__ = [
    "FIRST_TIME",
    "FORMAT_VERSION",
    "KIND_ARCHIVE",
    "KIND_CHANGE",
    "KIND_DICTIONARY",
    "KIND_STATE",
    "LAST_TIME",
    "MAX_SECONDS",
    "MAX_STORED_INT",
    "SCHEMA_KEY",
    "Append",
    "CallNotStartedError",
    "CallOutcomeUnknownError",
    "CapacityError",
    "Change",
    "ChangeListener",
    "ChangeNotice",
    "Codec",
    "ConfigError",
    "ContextCrashedError",
    "ContextExistsError",
    "ContextFailedError",
    "ContextLockedError",
    "ContextNotFoundError",
    "ContextOwnedElsewhereError",
    "ContextState",
    "ContextTimeoutError",
    "CorruptStateError",
    "CreateContext",
    "DeleteContext",
    "DeleteRecoveryPoint",
    "FeedEntry",
    "FeedTruncatedError",
    "FencedOffError",
    "FrozenDict",
    "FrozenList",
    "HistoryPolicy",
    "HoardError",
    "InvalidContextIdError",
    "InvalidMessageError",
    "InvalidValueError",
    "JournalEntry",
    "MemoryStore",
    "NoCurrentContextError",
    "Op",
    "OwnerIdInUseError",
    "PersistenceError",
    "PostgresStore",
    "PutRecoveryPoint",
    "PutSnapshot",
    "ReadView",
    "RecoveryPoint",
    "RecoveryPointNotFoundError",
    "RecoveryReport",
    "SQLiteStore",
    "Schema",
    "SchemaMigrationError",
    "SchemaNameMismatchError",
    "SchemaNameWarning",
    "SchemaValidationError",
    "SetTTL",
    "SkippedItem",
    "StateNotSavedError",
    "Store",
    "StoreLockedError",
    "StoreStats",
    "StoredContext",
    "SystemStoppedError",
    "VerifyIssue",
    "VersionConflictError",
    "VersionNotStoredError",
    "apply_change",
    "as_schema",
    "check_timeout",
    "context_of",
    "encoded_size",
    "freeze_mapping",
    "freeze_mapping_sized",
    "freeze_value",
    "freeze_value_sized",
    "make_converter",
    "make_store",
    "new_state",
    "open_store",
    "read_marker",
    "shown_repr",
    "thaw",
    "validate_by",
    "validate_id",
    "validate_key",
]
