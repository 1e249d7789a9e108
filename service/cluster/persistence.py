"""The registry's `Persistence` on a partition owner: every stream of an owned partition is resident.

An owner restores a partition's streams when it takes the lease and keeps them until it gives it up, so
a stream that is not in memory does not exist (no store read per unknown id: the answer must not depend on
whether Redis is up, or a replay could answer differently). Creation is checkpointed at once with the log
sequence of the message that created the stream, so a restore never replays that stream's earlier history.
With tenant quotas on, a created stream counts as held in the cluster's shared count, a deleted one no more.
"""

from __future__ import annotations

from trackin.service.cluster.quotas import SharedQuotas
from trackin.service.domain.catalog import Catalog, Template
from trackin.service.domain.persistence import InMemory
from trackin.service.durability import Checkpointer, Connection, Ledger, StoreHealth
from trackin.service.errors import InvalidInput, Unavailable
from trackin.service.store import Store

__all__ = ["Applying", "ClusterPersistence"]


class Applying:
    """The log sequence of the write being applied to each stream right now (set by the owner)."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}


class ClusterPersistence(InMemory):
    """Creations and deletions go to the fenced store; restores and residency are the owner's business."""

    def __init__(
        self,
        store: Store,
        connection: Connection,
        ledger: Ledger,
        checkpointer: Checkpointer,
        health: StoreHealth,
        applying: Applying,
        catalog: Catalog,
        quotas: SharedQuotas | None = None,
    ) -> None:
        self._store = store
        self._connection = connection
        self._ledger = ledger
        self._checkpointer = checkpointer
        self._health = health
        self._applying = applying
        self._catalog = catalog
        self._quotas = quotas

    async def created(self, stream_id: str) -> None:
        self._ledger.started(stream_id)
        seq = self._applying.seq.get(stream_id)
        if seq is not None:
            self._ledger.logged(stream_id, str(seq))
        try:
            accepted = await self._checkpointer.checkpoint([stream_id])
        except BaseException:
            self._ledger.forget(stream_id)
            raise
        if stream_id not in accepted:  # refused by the fence: the lease moved meanwhile
            self._ledger.forget(stream_id)
            raise Unavailable(
                f"stream {stream_id!r} moved to another replica", retry_after=1, stream=stream_id
            )
        record = self._catalog.record(stream_id)
        if self._quotas is not None and record is not None:
            await self._quotas.hold([(stream_id, record.spec)])

    async def forget(self, stream_id: str) -> None:
        epoch = await self._connection.require()
        with self._health.store_errors():
            await self._store.delete_stream(stream_id, epoch)
        self._ledger.forget(stream_id)
        if self._quotas is not None:
            await self._quotas.release(stream_id)

    async def stored_ids(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        await self._connection.require()
        with self._health.store_errors():
            return await self._store.list_streams(prefix, limit, cursor)

    async def save_template(self, template: Template) -> None:
        # Never called: the cluster routes keep templates in their bucket (service/cluster/templates.py).
        raise InvalidInput("templates are kept in the cluster's templates bucket", field="name")

    async def delete_template(self, name: str) -> None:
        raise InvalidInput("templates are kept in the cluster's templates bucket", field="name")
