"""hoard's actor layer: one `ContextActor` per active context, a `SupervisorActor` deciding
activation and the current context, and a `PersistenceActor` owning the store.

The context messages (`Get`, `GetState`, `Set`, `Update`, `Delete`, `SetMetadata`, `Transact`,
`Restore`, `CreateRecoveryPoint`) are public: another pykka actor can ``ask`` a context actor
directly (``adapter.actor_ref(id)`` gives its ref).
"""

from ._cell import ContextCell as ContextCell
from ._context import ContextActor as ContextActor
from ._context import UnknownMessageError as UnknownMessageError
from ._draft import Draft as Draft
from ._events import ContextActivated as ContextActivated
from ._events import ContextCreated as ContextCreated
from ._events import ContextDeactivated as ContextDeactivated
from ._events import ContextDeleted as ContextDeleted
from ._events import ContextEvent as ContextEvent
from ._events import ContextFailed as ContextFailed
from ._events import ContextRestarted as ContextRestarted
from ._events import CorruptionRecovered as CorruptionRecovered
from ._events import DeadLetter as DeadLetter
from ._events import MetadataChanged as MetadataChanged
from ._events import RecoveryPointCreated as RecoveryPointCreated
from ._events import RecoveryPointDeleted as RecoveryPointDeleted
from ._events import Restored as Restored
from ._events import StateChanged as StateChanged
from ._events import Switched as Switched
from ._future import DEFERRED as DEFERRED
from ._future import Reply as Reply
from ._messages import ContextStatus as ContextStatus
from ._messages import CreateRecoveryPoint as CreateRecoveryPoint
from ._messages import CreateRecoveryPoint as Snapshot  # the name issue 4 and the original system use
from ._messages import DeactivationReason as DeactivationReason
from ._messages import DeadLetterSeen as DeadLetterSeen
from ._messages import Delete as Delete
from ._messages import Get as Get
from ._messages import GetState as GetState
from ._messages import Restore as Restore
from ._messages import Set as Set
from ._messages import SetMetadata as SetMetadata
from ._messages import Transact as Transact
from ._messages import Transacted as Transacted
from ._messages import Update as Update
from ._persistence import PersistenceActor as PersistenceActor
from ._remote import RemoteChange as RemoteChange
from ._settings import DURABILITIES as DURABILITIES
from ._settings import ContextSettings as ContextSettings
from ._settings import PersistenceSettings as PersistenceSettings
from ._settings import SupervisorSettings as SupervisorSettings
from ._supervisor import SupervisorActor as SupervisorActor

__all__ = [
    "DEFERRED", "DURABILITIES", "ContextActivated", "ContextActor", "ContextCell", "ContextCreated",
    "ContextDeactivated", "ContextDeleted", "ContextEvent", "ContextFailed", "ContextRestarted",
    "CorruptionRecovered", "MetadataChanged", "RecoveryPointCreated", "RecoveryPointDeleted", "Restored",
    "Snapshot", "StateChanged", "Switched", "ContextSettings", "ContextStatus",
    "CreateRecoveryPoint", "DeactivationReason", "Delete", "Draft", "Get", "GetState", "PersistenceActor",
    "PersistenceSettings", "Reply", "Restore", "Set", "SetMetadata", "SupervisorActor", "SupervisorSettings",
    "Transact", "UnknownMessageError", "Update",
    "RemoteChange", "DeadLetter", "DeadLetterSeen", "Transacted",
]
