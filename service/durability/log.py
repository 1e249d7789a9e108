"""The durability log: each batch is in the store before it is applied and answered (``log`` durability).

An entry is one stream's share of a batch, stamped with this process's owner epoch and chained to the
last entry applied to the stream (`trackin.service.durability.payloads`), so a restore replays exactly
one owner's history. An append whose outcome is unknown (a timeout the store may still execute) makes
its streams *suspect*: they take no new batch (503) until whatever the log holds beyond their last applied
entry has been dropped, so a 503 ("nothing applied") never turns into a replay.
"""

from __future__ import annotations

import logging

from trackin.service.domain.ingest import IngestBatch
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.payloads import encode_batches
from trackin.service.errors import Unavailable
from trackin.service.store import LogEntry, Store

__all__ = ["DurabilityLog"]

log = logging.getLogger("trackin.durability")


class DurabilityLog:
    """Appends batches before they are applied; remembers and settles suspect streams."""

    def __init__(self, store: Store, connection: Connection, ledger: Ledger, health: StoreHealth) -> None:
        self._store = store
        self._connection = connection
        self._ledger = ledger
        self._health = health
        self._suspect: set[str] = set()

    async def append(self, batches: list[IngestBatch]) -> None:
        """Log the batches (the scheduler's ``before_apply`` hook); if that fails nothing is applied (503)."""
        epoch = await self._connection.require()
        payloads = encode_batches(batches, epoch, self._ledger.positions())
        unsettled = self._suspect.intersection(payloads)
        if unsettled:
            raise Unavailable(
                f"stream {min(unsettled)!r} is settling after a store failure, nothing applied",
                retry_after=1,
                stream=min(unsettled),
            )
        entries = [LogEntry(stream_id, payload) for stream_id, payload in payloads.items()]
        try:
            with self._health.store_errors("store unavailable, nothing applied"):
                positions = await self._store.append_log(entries)
        except Unavailable:
            # The append may still happen (a timeout the store executes later): remember the streams, so
            # their log is cleaned of what this process never applied before they go on.
            self._suspect.update(payloads)
            self._ledger.nudge()
            raise
        if not self._health.up:  # the store answered an append: it is back (a failure may have come last)
            self._health.mark(True)
        for entry, position in zip(entries, positions, strict=True):
            self._ledger.logged(entry.stream_id, position)

    def is_suspect(self, stream_id: str) -> bool:
        return stream_id in self._suspect

    def suspects(self) -> list[str]:
        return sorted(self._suspect)

    async def drop_orphans(self, stream_id: str) -> None:
        """Drop the stream's entries after the last one it applied, and clear its suspicion.

        Call once a checkpoint covers every entry the stream applied, so only orphans can follow it.
        """
        with self._health.store_errors():
            orphans = await self._store.read_log(stream_id, self._ledger.position(stream_id))
            if orphans:
                await self._store.trim_log(stream_id, orphans[-1][0])
        if orphans:
            log.warning(
                "stream %r: dropped %d log entries of appends answered 503 (never applied)",
                stream_id,
                len(orphans),
            )
        self.settled(stream_id)

    def settled(self, stream_id: str) -> None:
        """The stream's log holds nothing it did not apply (or it is gone): it takes batches again."""
        self._suspect.discard(stream_id)

    async def length(self) -> int:
        """Entries the log holds over all streams (not yet covered by a checkpoint)."""
        with self._health.store_errors():
            return await self._store.log_length()
