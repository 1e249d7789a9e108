"""`Durability`: the parts of durability as the app and the registry use them, in one object."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from trackin.models.engine import Engine
from trackin.service.domain.catalog import StreamRecord, Template
from trackin.service.durability.checkpointer import Checkpointer
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.loop import CheckpointLoop
from trackin.service.durability.records import TEMPLATE_KIND, template_value
from trackin.service.durability.residency import Hold, Residency
from trackin.service.durability.restorer import Restorer
from trackin.service.errors import Unavailable
from trackin.service.settings import Settings
from trackin.service.store import Store, open_store

__all__ = ["Durability", "configured_store"]

_PAGE = 1000
"""Ids per existence read, and streams per checkpoint write, of a bulk creation."""

log = logging.getLogger("trackin.durability")


def configured_store(settings: Settings) -> Store | None:
    """The store the settings name, not started yet; None when state is kept in memory only."""
    if settings.store == "memory":
        return None
    url = settings.redis_url if settings.store in ("auto", "redis") else None
    if settings.store == "redis" and not url:
        raise ValueError("store 'redis' needs TRACKIN_REDIS_URL")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_store(url, settings.data_dir, timeout=settings.store_timeout_seconds)


class Durability:
    """A thin front over the parts: the registry's `trackin.service.domain.persistence.Persistence`,
    and what the app needs (start, stop, readiness, the number of streams)."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        connection: Connection,
        health: StoreHealth,
        ledger: Ledger,
        checkpointer: Checkpointer,
        residency: Residency,
        restorer: Restorer,
        loop: CheckpointLoop,
    ) -> None:
        self._store = store
        self._engine = engine
        self._connection = connection
        self._health = health
        self._ledger = ledger
        self._checkpointer = checkpointer
        self._residency = residency
        self._restorer = restorer
        self._loop = loop

    # ----- the app ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        """Write every changed stream, then close the store (SIGTERM path)."""
        await self._loop.stop()
        await self._store.shutdown()

    async def is_up(self) -> bool:
        """Connected, and the store answers a ping (readiness)."""
        if not self._connection.connected:
            return False
        try:
            with self._health.store_errors():
                await self._store.ping()
        except Unavailable:
            return False
        self._health.mark(True)
        return True

    @property
    def settling(self) -> bool:
        """Streams refused after a store failure wait for their log to be settled (503 until then)."""
        return self._loop.settling

    @property
    def restored(self) -> bool:
        """The eager restore (``restore_eagerly``) is done, or was not asked for."""
        return self._loop.restored

    def known_streams(self) -> int:
        """Streams stored or resident."""
        return max(self._connection.known, len(self._engine))

    # ----- the registry -----------------------------------------------------------------------------------

    async def restore(self, stream_id: str) -> StreamRecord | None:
        return await self._restorer.restore(stream_id)

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        await self._restorer.prefetch(stream_ids)

    def all_resident(self) -> bool:
        """Connected, and as many streams resident as stored: the steady state without eviction. Only this
        process creates and deletes streams in its store, so the count it keeps is the store's."""
        return self._connection.connected and len(self._engine) >= self._connection.known

    def hold(self, stream_ids: Iterable[str]) -> Hold:
        return self._residency.hold(stream_ids)

    async def created(self, stream_id: str) -> None:
        """A new stream is checkpointed at once, so its creation survives a crash."""
        self._ledger.started(stream_id)
        try:
            await self._checkpointer.checkpoint([stream_id])  # unsaved: written unless a pass just did
        except BaseException:
            self._ledger.forget(stream_id)  # the registry undoes the creation
            raise
        self._connection.counted(+1)

    async def created_many(self, stream_ids: Sequence[str]) -> None:
        """Many new streams checkpointed a page at a time (one transaction or pipeline each: a store call
        stays well inside ``store_timeout_seconds``). If a page fails, the pages already written are
        deleted again (best effort: with the store down they stay, and are restored as streams later)."""
        for stream_id in stream_ids:
            self._ledger.started(stream_id)
        written: list[str] = []
        try:
            for start in range(0, len(stream_ids), _PAGE):
                page = stream_ids[start : start + _PAGE]
                await self._checkpointer.checkpoint(page)
                written += page
        except BaseException:
            for stream_id in stream_ids:
                self._ledger.forget(stream_id)
            await self._unwrite(written)
            raise
        self._connection.counted(+len(stream_ids))

    async def _unwrite(self, stream_ids: Sequence[str]) -> None:
        epoch = self._connection.epoch
        if epoch is None or not stream_ids:
            return
        try:
            with self._health.store_errors():
                for stream_id in stream_ids:
                    await self._store.delete_stream(stream_id, epoch)
        except Unavailable:
            log.error("store unavailable: %d streams of a refused bulk creation stay stored", len(stream_ids))

    async def stored_among(self, stream_ids: Sequence[str]) -> set[str]:
        await self._connection.require()
        found: set[str] = set()
        with self._health.store_errors():
            for start in range(0, len(stream_ids), _PAGE):
                found.update(await self._store.read_checkpoints(stream_ids[start : start + _PAGE]))
        return found

    async def forget(self, stream_id: str) -> None:
        """Delete a stream's checkpoint and log (fenced: a newer owner's stream is left alone)."""
        epoch = await self._connection.require()
        with self._health.store_errors():
            await self._store.delete_stream(stream_id, epoch)
        self._ledger.forget(stream_id)
        self._connection.counted(-1)

    async def stored_ids(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        await self._connection.require()
        with self._health.store_errors():
            return await self._store.list_streams(prefix, limit, cursor)

    async def save_template(self, template: Template) -> None:
        await self._connection.require()
        with self._health.store_errors():
            await self._store.put_record(TEMPLATE_KIND, template.name, template_value(template))

    async def delete_template(self, name: str) -> None:
        await self._connection.require()
        with self._health.store_errors():
            await self._store.delete_record(TEMPLATE_KIND, name)
