"""hoard's actor layer: one `ContextActor` per active context, a `SupervisorActor` deciding
activation and the current context, and a `PersistenceActor` owning the store.

The context messages (`Get`, `GetState`, `Set`, `Update`, `Delete`, `SetMetadata`, `Transact`,
`Restore`, `CreateRecoveryPoint`) are public: another pykka actor can ``ask`` or ``tell`` them to a
context (``system.ref(id)`` / ``adapter.actor_ref(id)`` give a stable address that survives
passivation). They check their fields when built (`InvalidMessageError`); a malformed one that reaches
an actor is answered with that error and never crashes it.

The rest of what is exported here is the protocol `hoard` (the runtime layer) speaks to these actors:
the supervisor's messages (`Activate`, `AddContext`, `RemoveContext`, `Sweep`, `Shutdown`, ...), the
persistence actor's (`StoreCall`, `StoreWrite`), the event bus and its gate, the lease and remote-change
plumbing, and the histogram records behind `metrics()`. They are public so that the layers meet only
at this face; an application has no need for them.
"""

from ._cell import EPOCH as EPOCH
from ._cell import ContextCell as ContextCell
from ._cell import fresh_mark as fresh_mark
from ._context import ContextActor as ContextActor
from ._context import UnknownMessageError as UnknownMessageError
from ._draft import Draft as Draft
from ._events import OVERFLOW_POLICIES as OVERFLOW_POLICIES
from ._events import Backlogs as Backlogs
from ._events import ChangesLost as ChangesLost
from ._events import ContextActivated as ContextActivated
from ._events import ContextCreated as ContextCreated
from ._events import ContextDeactivated as ContextDeactivated
from ._events import ContextDeleted as ContextDeleted
from ._events import ContextEvent as ContextEvent
from ._events import ContextFailed as ContextFailed
from ._events import ContextRestarted as ContextRestarted
from ._events import CorruptionRecovered as CorruptionRecovered
from ._events import DeadLetter as DeadLetter
from ._events import Emitter as Emitter
from ._events import EventBusActor as EventBusActor
from ._events import EventGate as EventGate
from ._events import MetadataChanged as MetadataChanged
from ._events import RecoveryPointCreated as RecoveryPointCreated
from ._events import RecoveryPointDeleted as RecoveryPointDeleted
from ._events import Restored as Restored
from ._events import StateChanged as StateChanged
from ._events import Subscribe as Subscribe
from ._events import SubscriberOverflow as SubscriberOverflow
from ._events import Switched as Switched
from ._events import Unsubscribe as Unsubscribe
from ._future import DEFERRED as DEFERRED
from ._future import Reply as Reply
from ._leases import AttachSupervisor as AttachSupervisor
from ._messages import Activate as Activate
from ._messages import AddContext as AddContext
from ._messages import CollectMetrics as CollectMetrics
from ._messages import Configure as Configure
from ._messages import ContextStatus as ContextStatus
from ._messages import CreateRecoveryPoint as CreateRecoveryPoint
from ._messages import CreateRecoveryPoint as Snapshot  # the name issue 4 and the original system use
from ._messages import CurrentId as CurrentId
from ._messages import Deactivate as Deactivate
from ._messages import DeactivationReason as DeactivationReason
from ._messages import DeadLetterSeen as DeadLetterSeen
from ._messages import Delete as Delete
from ._messages import Exists as Exists
from ._messages import Get as Get
from ._messages import GetMetrics as GetMetrics
from ._messages import GetState as GetState
from ._messages import ListActive as ListActive
from ._messages import ListIds as ListIds
from ._messages import RemoveContext as RemoveContext
from ._messages import Reset as Reset
from ._messages import Restore as Restore
from ._messages import Set as Set
from ._messages import SetMetadata as SetMetadata
from ._messages import SetPinned as SetPinned
from ._messages import Shutdown as Shutdown
from ._messages import StateOf as StateOf
from ._messages import StatusOf as StatusOf
from ._messages import StoreCall as StoreCall
from ._messages import StoreWrite as StoreWrite
from ._messages import Sweep as Sweep
from ._messages import Transact as Transact
from ._messages import Transacted as Transacted
from ._messages import Update as Update
from ._messages import acting_as as acting_as
from ._messages import current_by as current_by
from ._metrics import LATENCY_BOUNDS as LATENCY_BOUNDS
from ._metrics import SIZE_BOUNDS as SIZE_BOUNDS
from ._metrics import Histogram as Histogram
from ._metrics import HistogramSnapshot as HistogramSnapshot
from ._persistence import PersistenceActor as PersistenceActor
from ._remote import RemoteChange as RemoteChange
from ._remote import RemoteListener as RemoteListener
from ._settings import DURABILITIES as DURABILITIES
from ._settings import ContextSettings as ContextSettings
from ._settings import PersistenceSettings as PersistenceSettings
from ._settings import SupervisorSettings as SupervisorSettings
from ._supervisor import SupervisorActor as SupervisorActor
from ._supervisor import mailbox_depth as mailbox_depth

__all__ = [
    "DEFERRED",
    "DURABILITIES",
    "EPOCH",
    "LATENCY_BOUNDS",
    "OVERFLOW_POLICIES",
    "SIZE_BOUNDS",
    "Activate",
    "AddContext",
    "AttachSupervisor",
    "Backlogs",
    "ChangesLost",
    "CollectMetrics",
    "Configure",
    "ContextActivated",
    "ContextActor",
    "ContextCell",
    "ContextCreated",
    "ContextDeactivated",
    "ContextDeleted",
    "ContextEvent",
    "ContextFailed",
    "ContextRestarted",
    "ContextSettings",
    "ContextStatus",
    "CorruptionRecovered",
    "CreateRecoveryPoint",
    "CurrentId",
    "Deactivate",
    "DeactivationReason",
    "DeadLetter",
    "DeadLetterSeen",
    "Delete",
    "Draft",
    "Emitter",
    "EventBusActor",
    "EventGate",
    "Exists",
    "Get",
    "GetMetrics",
    "GetState",
    "Histogram",
    "HistogramSnapshot",
    "ListActive",
    "ListIds",
    "MetadataChanged",
    "PersistenceActor",
    "PersistenceSettings",
    "RecoveryPointCreated",
    "RecoveryPointDeleted",
    "RemoteChange",
    "RemoteListener",
    "RemoveContext",
    "Reply",
    "Reset",
    "Restore",
    "Restored",
    "Set",
    "SetMetadata",
    "SetPinned",
    "Shutdown",
    "Snapshot",
    "StateChanged",
    "StateOf",
    "StatusOf",
    "StoreCall",
    "StoreWrite",
    "Subscribe",
    "SubscriberOverflow",
    "SupervisorActor",
    "SupervisorSettings",
    "Sweep",
    "Switched",
    "Transact",
    "Transacted",
    "UnknownMessageError",
    "Unsubscribe",
    "Update",
    "acting_as",
    "current_by",
    "fresh_mark",
    "mailbox_depth",
]
