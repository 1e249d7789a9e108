"""Durability between the registry and a store: the log, checkpoints, bounded residency and restores.

- ``log`` durability: every batch is appended to the store's log before it is applied and answered
  (`DurabilityLog`); a checkpoint records the last log position it includes and the log is trimmed behind
  it (`Checkpointer`). Restoring a stream loads its checkpoint and replays its log tail (`Restorer`), so
  nothing acknowledged is lost, even to SIGKILL. ``checkpoint`` durability: no log; a crash loses the
  changes since the last checkpoint.
- A background loop (`CheckpointLoop`) checkpoints changed streams every ``checkpoint_every_steps``
  observations or ``checkpoint_interval_seconds``, in batched writes; SIGTERM writes every changed stream.
- Fencing: writes carry this process's owner epoch (`Connection`) and the stream's observation count
  (`Ledger`); the store refuses stale ones. Log entries carry the epoch and the position they build on, so
  a replay follows exactly one owner's history.
- With ``max_resident_streams``, least recently used streams are checkpointed and dropped (`Residency`);
  the next request restores them, and ``async with residency.hold(ids)`` keeps a request's streams in.
- A store that is down makes log-mode ingestion answer 503 (nothing applied) while predictions keep
  working; `StoreHealth.store_errors` is the one place a store failure becomes that 503. Checkpoints retry
  with backoff, and everything resumes when the store returns.

`Durability` is the front the app and the registry use; the parts take their collaborators in their
constructors, and `trackin.service.app` builds them in dependency order.
"""

from trackin.service.durability.checkpointer import Checkpointer
from trackin.service.durability.connection import Connection
from trackin.service.durability.facade import Durability, configured_store
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.log import DurabilityLog
from trackin.service.durability.loop import CheckpointLoop
from trackin.service.durability.residency import Hold, Residency
from trackin.service.durability.restorer import Restorer

__all__ = [
    "CheckpointLoop",
    "Checkpointer",
    "Connection",
    "Durability",
    "DurabilityLog",
    "Hold",
    "Ledger",
    "Residency",
    "Restorer",
    "StoreHealth",
    "configured_store",
]
