"""Checkpoints: streams' state written to the store in batches, fenced, with the log trimmed behind them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from trackin.models.engine import Engine
from trackin.models.layout import PackedState
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import StreamRecord
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.records import Records, record_meta
from trackin.service.durability.rowstate import RowBlobs
from trackin.service.errors import Unavailable
from trackin.service.metrics import Metrics
from trackin.service.store import FORMAT_VERSION, Checkpoint, Store
from trackin.service.store.codec import FORMAT_KEY

__all__ = ["Checkpointer"]

log = logging.getLogger("trackin.durability")

_Group = tuple[PackedState, list[str], list[Tensor]]
"""One pool's share of a pass: its layout, the streams, their rows of each buffer."""


class Checkpointer:
    """Writes streams' state, one batched write at a time, each checkpoint fenced by ``(epoch, count)``.

    The export runs on the engine thread in queue order, so a state and the log position read with it
    belong together: every batch logged before the export has been applied, none after. The store keeps a
    checkpoint only if its ``(epoch, count)`` is newer than the stored one; a refusal (a newer owner took
    the stream over) is counted and logged as ``rejected_stale``, not raised.
    """

    def __init__(
        self,
        store: Store,
        connection: Connection,
        ledger: Ledger,
        scheduler: Scheduler,
        records: Records,
        health: StoreHealth,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._connection = connection
        self._ledger = ledger
        self._scheduler = scheduler
        self._records = records
        self._health = health
        self._metrics = metrics
        # One write at a time: two overlapping writes of one stream at one count would make the store
        # refuse the second as stale (a false rejected_stale count, which pages someone).
        self._lock = asyncio.Lock()
        self._blobs = RowBlobs()
        self._specs: dict[StreamSpec, dict[str, Any]] = {}  # each spec dumped once

    async def checkpoint(self, stream_ids: Sequence[str]) -> list[str]:
        """Write those of the streams that changed since their last checkpoint; the ids the store
        accepted. ``Unavailable`` if the store is down."""
        async with self._lock:
            return await self._write(stream_ids)

    async def _write(self, stream_ids: Sequence[str]) -> list[str]:
        ledger = self._ledger
        wanted = [s for s in stream_ids if ledger.changed(s)]
        if not wanted:
            return []
        epoch = await self._connection.require()

        def export(engine: Engine) -> tuple[list[_Group], dict[str, int], dict[str, str]]:
            # On the engine thread, in queue order: the rows and the counts and positions belong together.
            present = [s for s in wanted if s in engine]
            ledger.applied_head = ledger.head  # every batch logged so far has been applied
            groups = [(pool.packed, ids, rows) for pool, ids, rows in engine.export_rows(present)]
            return groups, {s: ledger.count(s) for s in present}, {s: ledger.position(s) for s in present}

        groups, counts, positions = await self._scheduler.call(export)
        records = {s: r for s in counts if (r := self._records.record(s)) is not None}
        started = time.perf_counter()
        checkpoints = await asyncio.to_thread(self._encode, epoch, groups, records, counts, positions)
        try:
            with self._health.store_errors():
                outcome = await self._store.write_checkpoints(checkpoints)
        except Unavailable:
            self._metrics.checkpoint_written("failed", len(checkpoints))
            self._metrics.checkpoint_pass(time.perf_counter() - started, ok=False)
            raise
        self._health.mark(True)
        self._metrics.checkpoint_pass(time.perf_counter() - started, ok=True)
        if outcome.accepted:
            self._metrics.checkpoint_written("accepted", len(outcome.accepted))
        if outcome.rejected:
            self._metrics.checkpoint_written("rejected_stale", len(outcome.rejected))
            log.warning(
                "store refused %d stale checkpoint(s), e.g. %s", len(outcome.rejected), outcome.rejected[0]
            )
        by_id = {c.stream_id: c for c in checkpoints}
        trims: dict[str, str] = {}
        for stream_id in outcome.accepted:
            written = by_id[stream_id]
            ledger.checkpointed(stream_id, written.step, written.log_position)
            if written.log_position and not written.log_position.startswith("b"):
                trims[stream_id] = written.log_position  # a per-stream log's (written before the batch log)
        for stream_id in outcome.rejected:
            # Equal (epoch, step) is already stored (a retry after a partial write): nothing left to do.
            ledger.checkpointed(stream_id, by_id[stream_id].step)
        if trims:
            with self._health.store_errors():
                await self._store.trim_logs(trims)
        return outcome.accepted

    def _encode(
        self,
        epoch: int,
        groups: list[_Group],
        records: dict[str, StreamRecord],
        counts: dict[str, int],
        positions: dict[str, str],
    ) -> list[Checkpoint]:
        """Checkpoints of the exported streams that still have a record (on a worker thread: the blobs)."""
        if len(self._specs) > 256:
            self._specs.clear()
        out = []
        for packed, ids, rows in groups:
            for stream_id, blob in zip(ids, self._blobs.encode(packed, rows), strict=True):
                record = records.get(stream_id)
                if record is None:
                    continue  # removed meanwhile
                spec = self._specs.get(record.spec)
                if spec is None:
                    spec = self._specs[record.spec] = record.spec.model_dump(mode="json")
                meta = record_meta(record, counts[stream_id], spec)
                meta[FORMAT_KEY] = FORMAT_VERSION
                out.append(Checkpoint(stream_id, epoch, counts[stream_id], positions[stream_id], meta, blob))
        return out
