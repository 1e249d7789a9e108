"""The durability log: each batch is in the store before it is applied and answered (``log`` durability).

Group commit: one batch-log entry per engine batch (`trackin.service.durability.payloads.encode_group`),
stamped with this process's owner epoch, each stream's share chained to the last entry applied to the
stream, so a restore replays exactly one owner's history. The log is one per store with every owner's
entries in write order; this process trims only its own, behind every stream's checkpoint
(`Ledger.trim_horizon`). Entries of other (crashed or older) owners are adopted at start by the restorer.

An append whose outcome is unknown (a timeout the store may still execute) makes its streams *suspect*:
they take no new batch (503) until the entries this process wrote since then and never had acknowledged
(orphans: nobody applied them) are deleted, so a 503 ("nothing applied") never turns into a replay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from trackin.service.domain.ingest import IngestBatch
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.payloads import encode_group
from trackin.service.errors import Unavailable
from trackin.service.store import Store, batch_position_key

__all__ = ["DurabilityLog"]

log = logging.getLogger("trackin.durability")


class DurabilityLog:
    """Appends batches before they are applied; remembers and settles suspect streams; trims."""

    def __init__(
        self,
        store: Store,
        connection: Connection,
        ledger: Ledger,
        health: StoreHealth,
        *,
        float32: bool = True,
    ) -> None:
        self._store = store
        self._float32 = float32  # float32 streams' observations logged as float32 (format 4)
        self._connection = connection
        self._ledger = ledger
        self._health = health
        self._suspect: set[str] = set()
        self._failed_after: str | None = None  # the head before the first unsettled failed append
        self._acknowledged: set[str] = set()  # positions appended since then
        self._trimmed = ""
        # Appends and the orphan sweep never overlap: an append in flight is not an orphan.
        self._lock = asyncio.Lock()

    async def append(self, batches: list[IngestBatch]) -> None:
        """Log the batches (the scheduler's ``before_apply`` hook); if that fails nothing is applied (503)."""
        epoch = await self._connection.require()
        if self._suspect:
            ids = itertools.chain.from_iterable(b.stream_ids for b in batches)
            unsettled = self._suspect.intersection(ids)
            if unsettled:
                raise Unavailable(
                    f"stream {min(unsettled)!r} is settling after a store failure, nothing applied",
                    retry_after=1,
                    stream=min(unsettled),
                )
        entries = encode_group(batches, epoch, self._ledger.positions(), float32=self._float32)
        async with self._lock:
            try:
                with self._health.store_errors("store unavailable, nothing applied"):
                    positions = await self._store.append_batches(epoch, [e.payload for e in entries])
            except Unavailable:
                # The append may still happen (a timeout the store executes later): remember the streams,
                # so the log is cleaned of what this process never applied before they go on.
                if self._failed_after is None:
                    self._failed_after = self._ledger.head
                for entry in entries:
                    self._suspect.update(entry.streams)
                self._ledger.nudge()
                raise
            if self._failed_after is not None:
                self._acknowledged.update(positions)
        if not self._health.up:  # the store answered an append: it is back (a failure may have come last)
            self._health.mark(True)
        for entry, position in zip(entries, positions, strict=True):
            self._ledger.logged_many(entry.streams, position)

    def is_suspect(self, stream_id: str) -> bool:
        return stream_id in self._suspect

    def suspects(self) -> list[str]:
        return sorted(self._suspect)

    async def drop_orphans(self) -> None:
        """Delete this process's entries written since the first unsettled failure that no append
        acknowledged (so nobody applied them), and clear every suspicion."""
        if self._failed_after is None:
            self._suspect.clear()
            return
        epoch = await self._connection.require()
        async with self._lock:
            with self._health.store_errors():
                written = await self._store.read_batches(self._failed_after)
                orphans = [p for p, e, _ in written if e == epoch and p not in self._acknowledged]
                if orphans:
                    await self._store.delete_batches(orphans)
            if orphans:
                log.warning(
                    "%s: dropped %d log entries of appends answered 503 (never applied)",
                    ", ".join(repr(s) for s in sorted(self._suspect)),
                    len(orphans),
                )
            self._suspect.clear()
            self._acknowledged.clear()
            self._failed_after = None

    async def trim(self) -> None:
        """Drop this process's entries that every stream's checkpoint covers."""
        epoch = self._connection.epoch
        horizon = self._ledger.trim_horizon()
        if epoch is None or batch_position_key(horizon) <= batch_position_key(self._trimmed):
            return
        with self._health.store_errors():
            await self._store.trim_batches(epoch, horizon)
        self._trimmed = horizon

    async def length(self) -> int:
        """Entries the log holds (not yet covered by a checkpoint)."""
        with self._health.store_errors():
            return await self._store.log_length()
