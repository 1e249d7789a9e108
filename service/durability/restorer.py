"""Restoring streams that are not resident: their checkpoint, then the chain of their log tail.

One stream at a time when a request needs it (`Restorer.restore`), or many in one store read and one
engine call: the stored streams a request names (`Restorer.prefetch`) and, with ``restore_eagerly``,
every stored stream at start (`Restorer.restore_all`). A checkpoint that cannot be decoded, or does not
fit its spec, is reported for its stream (`StreamCorrupt`, 500), never replaced by a fresh model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import StreamRecord
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.payloads import ReplayPlan, decode_payload, plan_replay
from trackin.service.durability.records import COUNT_KEY, Records, record_from_meta
from trackin.service.durability.residency import Residency
from trackin.service.errors import StreamCorrupt
from trackin.service.metrics import Metrics
from trackin.service.store import STREAM_ID_PATTERN, Checkpoint, CorruptCheckpoint, Store, decode_state
from trackin.service.store.codec import upgrade_spec

__all__ = ["Restorer"]

log = logging.getLogger("trackin.durability")

PAGE = 1000
"""Streams per batched restore: one store read and one engine call each."""

_Tail = list[tuple[str, bytes]]


class Restorer:
    """Loads stored streams into the engine and their records into the registry's catalog.

    Args:
        replay_log: replay log tails (``log`` durability); without, a checkpoint is the whole state.
        limit: ``max_resident_streams``; an eager restore stops there.
    """

    def __init__(
        self,
        store: Store,
        connection: Connection,
        ledger: Ledger,
        engine: Engine,
        scheduler: Scheduler,
        records: Records,
        residency: Residency,
        health: StoreHealth,
        metrics: Metrics,
        *,
        replay_log: bool,
        limit: int | None,
    ) -> None:
        self._store = store
        self._connection = connection
        self._ledger = ledger
        self._engine = engine
        self._scheduler = scheduler
        self._records = records
        self._residency = residency
        self._health = health
        self._metrics = metrics
        self._replay_log = replay_log
        self._limit = limit
        self._restoring: dict[str, asyncio.Lock] = {}

    async def restore(self, stream_id: str) -> StreamRecord | None:
        """Load a stream that is not resident; its record, or None if it was never stored.

        Concurrent callers for one stream share one load (a per-stream lock); a stream being evicted is
        waited for and then loaded again. Residency is decided by the record, never by the engine alone:
        a stream is in the engine without a record while a request is creating it or an eviction is
        dropping it, and answering "unknown" then would be a spurious 404.
        """
        while True:
            evicting = self._residency.evicting(stream_id)
            if evicting is not None:
                await evicting.wait()
                continue
            record = self._records.record(stream_id)
            if record is not None:
                return record
            await self._connection.require()
            lock = self._restoring.setdefault(stream_id, asyncio.Lock())
            async with lock:
                if self._residency.evicting(stream_id) is not None or stream_id in self._records:
                    continue  # evicted or restored by someone else while we waited: look again
                try:
                    return await self._load(stream_id)
                finally:
                    self._restoring.pop(stream_id, None)

    async def _load(self, stream_id: str) -> StreamRecord | None:
        if stream_id in self._engine:
            return None  # being created by put_stream right now, not stored yet
        started = time.perf_counter()
        with self._health.store_errors(f"store unavailable, cannot restore {stream_id!r}"):
            checkpoint = await self._store.read_checkpoint(stream_id)
            if checkpoint is None:
                return None
            tail = await self._store.read_log(stream_id, checkpoint.log_position) if self._replay_log else []
        outcome = (await self._install([(checkpoint, tail)]))[stream_id]
        if isinstance(outcome, StreamCorrupt):
            raise outcome
        self._metrics.restored(time.perf_counter() - started)
        return outcome

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        """Restore the stored ones of many non-resident streams at once (a store read and an engine call
        per page), e.g. before a batch of observations is validated stream by stream.

        Best effort: ids that are invalid, unknown or corrupt are left for `restore` to answer one by one.
        """
        wanted = [
            s
            for s in dict.fromkeys(stream_ids)
            if s not in self._records
            and self._residency.evicting(s) is None
            and STREAM_ID_PATTERN.fullmatch(s)
        ]
        if len(wanted) < 2:
            return  # one stream: the ordinary path is as fast
        await self._connection.require()
        with self._health.store_errors("store unavailable, cannot restore streams"):
            for start in range(0, len(wanted), PAGE):
                await self._restore_page(wanted[start : start + PAGE], report=False)

    async def restore_all(self) -> None:
        """Eager restore: every stored stream, a page at a time, up to the residency limit if any.

        Streams a request is restoring meanwhile are left to it; corrupt ones are logged.
        """
        limit, cursor = self._limit, None
        with self._health.store_errors("store unavailable, cannot restore streams"):
            while True:
                ids, cursor = await self._store.list_streams("", PAGE, cursor)
                if limit is not None:
                    ids = ids[: max(0, limit - len(self._engine))]
                await self._restore_page(ids, report=True)
                if cursor is None or (limit is not None and len(self._engine) >= limit):
                    return

    async def _restore_page(self, ids: Sequence[str], *, report: bool) -> None:
        """Restore the stored ones of ``ids`` that nobody else is restoring; ``report``: log corrupt ones."""
        locks: list[tuple[str, asyncio.Lock]] = []
        for stream_id in ids:
            lock = self._restoring.setdefault(stream_id, asyncio.Lock())
            if not lock.locked() and stream_id not in self._records:
                await lock.acquire()  # free: returns at once
                locks.append((stream_id, lock))
        try:
            if not locks:
                return
            started = time.perf_counter()
            checkpoints = await self._store.read_checkpoints([s for s, _ in locks])
            tails = (
                await self._store.read_logs({s: c.log_position for s, c in checkpoints.items()})
                if self._replay_log
                else {}
            )
            loaded = await self._install([(c, tails.get(s, [])) for s, c in checkpoints.items()])
            if loaded:
                each = (time.perf_counter() - started) / len(loaded)
                for outcome in loaded.values():
                    if not isinstance(outcome, StreamCorrupt):
                        self._metrics.restored(each)
                    elif report:
                        log.error("%s", outcome.message)
        finally:
            for stream_id, lock in locks:
                lock.release()
                self._restoring.pop(stream_id, None)

    async def _install(
        self, stored: list[tuple[Checkpoint, _Tail]]
    ) -> dict[str, StreamRecord | StreamCorrupt]:
        """Install stored streams (checkpoint, then the chain of their log tails) in one engine call.

        Decoding runs on a worker thread, so a large batch (eager restore) never stalls the event loop.
        A stream that cannot be decoded or does not fit its spec is reported, not installed.
        """
        decoded = await asyncio.to_thread(lambda: [_decode(c, tail) for c, tail in stored])
        ready = [d for d in decoded if not isinstance(d, StreamCorrupt)]
        installed = await self._scheduler.call(lambda engine: _install_all(engine, ready)) if ready else {}
        results: dict[str, StreamRecord | StreamCorrupt] = {}
        replayed_total = 0
        for d in decoded:
            if isinstance(d, StreamCorrupt):
                assert d.stream is not None
                results[d.stream] = d
                continue
            stream_id = d.checkpoint.stream_id
            replayed = installed.get(stream_id)
            if isinstance(replayed, StreamCorrupt):
                results[stream_id] = replayed
                continue
            if replayed is None:  # was resident already
                existing = self._records.record(stream_id)
                if existing is not None:
                    results[stream_id] = existing
                continue
            if d.plan.skipped:
                log.warning(
                    "stream %r: skipped %d log entries never applied by its owner (a stale process's, "
                    "or appends answered 503)",
                    stream_id,
                    d.plan.skipped,
                )
            replayed_total += replayed
            meta = d.checkpoint.meta
            count = int(meta.get(COUNT_KEY, d.checkpoint.step)) + replayed
            self._ledger.loaded(stream_id, count=count, saved=d.checkpoint.step, head=d.plan.head)
            results[stream_id] = self._records.adopt(stream_id, record_from_meta(d.spec, meta))
        if replayed_total:
            self._metrics.observed("applied", "log", replayed_total)
        return results


@dataclass(frozen=True, slots=True)
class _Decoded:
    checkpoint: Checkpoint
    spec: StreamSpec
    tensors: dict[str, torch.Tensor]
    plan: ReplayPlan


def _decode(checkpoint: Checkpoint, tail: _Tail) -> _Decoded | StreamCorrupt:
    """A stored stream made ready to install, or the error naming it (never a fresh model instead)."""
    stream_id = checkpoint.stream_id
    try:
        spec = StreamSpec.model_validate(upgrade_spec(checkpoint.meta["spec"], checkpoint.meta))
        tensors = decode_state(stream_id, checkpoint.tensors, checkpoint.meta)
        plan = plan_replay(
            checkpoint.epoch,
            checkpoint.log_position,
            [decode_payload(position, payload) for position, payload in tail],
        )
    except CorruptCheckpoint as exc:
        return StreamCorrupt(str(exc), stream=stream_id)
    except Exception as exc:
        return StreamCorrupt(f"checkpoint of {stream_id!r} is unreadable: {exc}", stream=stream_id)
    return _Decoded(checkpoint, spec, tensors, plan)


def _install_all(engine: Engine, ready: list[_Decoded]) -> dict[str, int | StreamCorrupt]:
    """On the engine thread: each stream's checkpoint, then its log entries through the live engine call;
    the observations replayed per stream installed (streams resident already are left as they are)."""
    out: dict[str, int | StreamCorrupt] = {}
    for d in ready:
        stream_id = d.checkpoint.stream_id
        if stream_id in engine:
            continue  # installed meanwhile (e.g. created again): leave it as it is
        engine.add(stream_id, d.spec)
        try:
            engine.load(stream_id, d.tensors)
        except (KeyError, ValueError) as exc:
            engine.remove(stream_id)
            out[stream_id] = StreamCorrupt(
                f"checkpoint of {stream_id!r} does not fit its spec: {exc}", stream=stream_id
            )
            continue
        applied = 0
        for entry in d.plan.apply:
            engine.observe([stream_id] * len(entry.inputs), entry.inputs, entry.targets, entry.times)
            applied += len(entry.inputs)
        out[stream_id] = applied
    return out
