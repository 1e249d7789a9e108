"""Checkpoints: streams' state written to the store in batches, fenced, with the log trimmed behind them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import torch

from trackin.models.engine import Engine
from trackin.service.domain.catalog import StreamRecord
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.records import Records, record_meta
from trackin.service.errors import Unavailable
from trackin.service.metrics import Metrics
from trackin.service.store import Checkpoint, Store, encode_state

__all__ = ["Checkpointer"]

log = logging.getLogger("trackin.durability")

_Export = tuple[str, dict[str, torch.Tensor], int, str, StreamRecord]
"""A stream's exported state: id, tensors, observations applied, log position, record."""


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

        def export(engine: Engine) -> list[tuple[str, dict[str, torch.Tensor], int, str]]:
            return [(s, engine.export(s), ledger.count(s), ledger.position(s)) for s in wanted if s in engine]

        exported = [
            (*row, record)
            for row in await self._scheduler.call(export)
            if (record := self._records.record(row[0])) is not None
        ]
        started = time.perf_counter()
        checkpoints = await asyncio.to_thread(_encode, epoch, exported)
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
            ledger.checkpointed(stream_id, written.step)
            if written.log_position:
                trims[stream_id] = written.log_position
        for stream_id in outcome.rejected:
            # Equal (epoch, step) is already stored (a retry after a partial write): nothing left to do.
            ledger.checkpointed(stream_id, by_id[stream_id].step)
        if trims:
            with self._health.store_errors():
                await self._store.trim_logs(trims)
        return outcome.accepted


def _encode(epoch: int, exported: list[_Export]) -> list[Checkpoint]:
    """Checkpoints of the exported streams (on a worker thread: safetensors bytes of every stream)."""
    out = []
    for stream_id, tensors, count, position, record in exported:
        blob, meta = encode_state(tensors, record_meta(record, count))
        out.append(Checkpoint(stream_id, epoch, count, position, meta, blob))
    return out
