"""This process's ownership of the store: started once, with the owner epoch that fences its writes."""

from __future__ import annotations

import asyncio
import logging

from trackin.service.durability.health import StoreHealth
from trackin.service.durability.records import TEMPLATE_KIND, Records, template_from_value
from trackin.service.store import Store

__all__ = ["Connection"]

log = logging.getLogger("trackin.durability")


class Connection:
    """The store as this process owns it: its owner epoch, and how many streams it holds.

    Connecting starts the store, takes a fresh owner epoch (every write carries it; the store refuses
    writes of older epochs, see `trackin.service.store.base`), loads the stored templates and counts the
    stored streams, all or nothing. Until it has succeeded, whatever needs the store answers 503 and the
    checkpoint loop keeps trying.
    """

    def __init__(self, store: Store, health: StoreHealth, records: Records) -> None:
        self._store = store
        self._health = health
        self._records = records
        self._lock = asyncio.Lock()
        self.epoch: int | None = None
        self.known = 0
        """Streams stored: counted when connecting, then kept by this process's creations and deletions."""

    @property
    def connected(self) -> bool:
        return self.epoch is not None

    async def require(self) -> int:
        """The owner epoch, connecting first if need be; ``Unavailable`` while the store is down."""
        if self.epoch is None:
            await self.connect()
        assert self.epoch is not None
        return self.epoch

    async def connect(self) -> bool:
        """Connect unless connected; True if this call did (``Unavailable`` if the store is down)."""
        async with self._lock:
            if self.epoch is not None:
                return False
            with self._health.store_errors():
                await self._store.startup()
                epoch = await self._store.acquire_epoch()
                templates = await self._store.list_records(TEMPLATE_KIND)
                known = await self._store.count_streams()
            self._records.load_templates(template_from_value(n, v) for n, v in templates.items())
            self.epoch, self.known = epoch, known
            self._health.mark(True)
            log.info("store connected, owner epoch %d", epoch)
            return True

    def counted(self, change: int) -> None:
        """A stream was stored (+1) or deleted (-1) by this process."""
        self.known = max(0, self.known + change)
