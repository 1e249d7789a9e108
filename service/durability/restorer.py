"""Restoring streams that are not resident: their checkpoint, then the chain of their log tail.

One stream at a time when a request needs it (`Restorer.restore`), or many in one store read and one
engine call: the stored streams a request names (`Restorer.prefetch`) and, with ``restore_eagerly``,
every stored stream at start (`Restorer.restore_all`). A checkpoint that cannot be decoded, or does not
fit its spec, is reported for its stream (`StreamCorrupt`, 500), never replaced by a fresh model.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import StreamRecord
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability.checkpointer import Checkpointer
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.payloads import (
    LoggedBatch,
    ReplayPlan,
    decode_group,
    decode_payload,
    plan_replay,
)
from trackin.service.durability.records import COUNT_KEY, Records, record_from_meta
from trackin.service.durability.residency import Residency
from trackin.service.durability.rowstate import RowBlobs
from trackin.service.errors import StreamCorrupt
from trackin.service.metrics import Metrics
from trackin.service.store import STREAM_ID_PATTERN, Checkpoint, CorruptCheckpoint, Store, batch_position_key
from trackin.service.store.codec import FORMAT_KEY, upgrade_spec

__all__ = ["Restorer"]

log = logging.getLogger("trackin.durability")

PAGE = 1000
"""Streams per batched restore: one store read and one engine call each."""

_Tail = list[LoggedBatch]


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
        checkpointer: Checkpointer | None = None,
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
        self._checkpointer = checkpointer
        self._adopted = not replay_log
        self._adopting = asyncio.Lock()
        self._limit = limit
        self._restoring: dict[str, asyncio.Lock] = {}
        self._blobs = RowBlobs()
        self._specs: dict[tuple[object, bytes], StreamSpec] = {}
        self._last_spec: tuple[object, dict[str, Any], StreamSpec] | None = None

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
            await self.adopt(f"store unavailable, cannot restore {stream_id!r}")
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
        outcome = (await self._install([(checkpoint, [])]))[stream_id]
        if isinstance(outcome, StreamCorrupt):
            raise outcome
        self._metrics.restored(time.perf_counter() - started)
        return outcome

    async def adopt(self, failure: str = "store unavailable, cannot take over the log") -> None:
        """Once, before this process restores anything (``log`` durability): take over what the log holds
        beyond the checkpoints, then no restore needs the log again.

        The log holds other owners' entries (a crashed or older process's, and per-stream entries of servers
        before the batch log). Read once, they are an index of the streams with entries: those streams are
        restored (checkpoint plus their chain), checkpointed by this owner, and then the entries are deleted.
        Every other stored stream's checkpoint is its whole state, and this process's own entries are only
        for streams it holds (an evicted stream is checkpointed first), so later restores read checkpoints
        only. Until this has succeeded, restores wait (503 while the store is down).
        """
        if self._adopted:
            return
        async with self._adopting:
            if self._adopted:
                return
            epoch = await self._connection.require()
            with self._health.store_errors(failure):
                written = await self._store.read_batches("")
                legacy = await self._store.legacy_log_streams()
            theirs = [(position, payload) for position, writer, payload in written if writer != epoch]
            adoption = _Adoption(await asyncio.to_thread(_shares, theirs), set(legacy), {}, set())
            wanted = list(dict.fromkeys([*adoption.shares, *legacy]))
            with self._health.store_errors(failure):
                for start in range(0, len(wanted), PAGE):
                    page = await self._read_page(wanted[start : start + PAGE], adoption)
                    adoption.stored.update(page.checkpoints)
                    await self._install_page(page, report=True)
            if wanted and self._checkpointer is not None:
                await self._checkpointer.checkpoint(wanted)
            covered = all(s in self._records and self._ledger.clean(s) for s in adoption.stored)
            if covered:
                with self._health.store_errors(failure):
                    await self._store.delete_batches([position for position, _ in theirs])
                    await self._store.trim_logs(adoption.legacy_heads)
            elif wanted:
                log.warning("log entries of earlier owners kept: not every stream they hold is checkpointed")
            if wanted:
                log.info("took over the log: %d entries, %d streams", len(theirs) + len(legacy), len(wanted))
            self._adopted = True

    async def _tails(self, checkpoints: dict[str, Checkpoint], adoption: _Adoption) -> dict[str, _Tail]:
        """Each stream's log entries after its checkpoint: its per-stream log (if the checkpoint is older than
        the batch log), then its shares of the batch log, in order."""
        after = {
            s: c.log_position
            for s, c in checkpoints.items()
            if s in adoption.legacy and not c.log_position.startswith("b")
        }
        raw = await self._store.read_logs(after) if after else {}
        tails: dict[str, _Tail] = {}
        for stream_id, checkpoint in checkpoints.items():
            entries = raw.get(stream_id, [])
            if entries:
                adoption.legacy_heads[stream_id] = entries[-1][0]
            tail = [decode_payload(position, payload) for position, payload in entries]
            key = batch_position_key(checkpoint.log_position)
            tail += [e for e in adoption.shares.get(stream_id, []) if batch_position_key(e.position) > key]
            tails[stream_id] = tail
        return tails

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        """Restore the stored ones of many non-resident streams at once (a store read and an engine call
        per page), e.g. before a batch of observations is validated stream by stream.

        Best effort: ids that are invalid, unknown or corrupt are left for `restore` to answer one by one.
        """
        wanted = [
            s
            for s in self._records.missing(stream_ids)
            if self._residency.evicting(s) is None and STREAM_ID_PATTERN.fullmatch(s)
        ]
        if len(wanted) < 2:
            return  # one stream: the ordinary path is as fast
        await self._connection.require()
        await self.adopt("store unavailable, cannot restore streams")
        with self._health.store_errors("store unavailable, cannot restore streams"):
            for start in range(0, len(wanted), PAGE):
                await self._restore_page(wanted[start : start + PAGE], report=False)

    async def restore_all(self) -> None:
        """Eager restore: every stored stream, a page at a time, up to the residency limit if any.

        Without a limit, the next page is read from the store while the current one is installed, so the
        store's work overlaps decoding and the engine. Streams a request is restoring meanwhile are left
        to it; corrupt ones are logged.
        """
        await self.adopt("store unavailable, cannot restore streams")
        limit, cursor = self._limit, None
        with _collector_paused(), self._health.store_errors("store unavailable, cannot restore streams"):
            if limit is not None:
                while True:
                    ids, cursor = await self._store.list_streams("", PAGE, cursor)
                    await self._restore_page(ids[: max(0, limit - len(self._engine))], report=True)
                    if cursor is None or len(self._engine) >= limit:
                        return
            ids, cursor = await self._store.list_streams("", PAGE, None)
            page = await self._read_page(ids)
            while True:
                following: asyncio.Task[_Page] | None = None
                if cursor is not None:
                    ids, cursor = await self._store.list_streams("", PAGE, cursor)
                    following = asyncio.create_task(self._read_page(ids))
                try:
                    await self._install_page(page, report=True)
                except BaseException:
                    if following is not None:
                        following.cancel()
                        with contextlib.suppress(BaseException):
                            self._release(await following)
                    raise
                if following is None:
                    return
                page = await following

    async def _restore_page(self, ids: Sequence[str], *, report: bool) -> None:
        """Restore the stored ones of ``ids`` that nobody else is restoring; ``report``: log corrupt ones."""
        await self._install_page(await self._read_page(ids), report=report)

    async def _read_page(self, ids: Sequence[str], adoption: _Adoption | None = None) -> _Page:
        """Claim the streams of ``ids`` nobody else is restoring, and read their checkpoints and, when
        adopting, their log tails (released by `_install_page`, or here if the read fails).

        The page's streams share one held lock under their ids in ``_restoring`` (a lock per stream cost
        more than reading its checkpoint): a request restoring one of them meanwhile waits for the page."""
        lock = asyncio.Lock()
        await lock.acquire()  # free: returns at once
        restoring, records = self._restoring, self._records
        claimed = [s for s in ids if s not in records and restoring.setdefault(s, lock) is lock]
        page = _Page(lock, claimed, time.perf_counter(), {}, {})
        try:
            if not claimed:
                return page
            checkpoints = await self._store.read_checkpoints(claimed)
            tails = {} if adoption is None else await self._tails(checkpoints, adoption)
        except BaseException:
            self._release(page)
            raise
        return _Page(lock, claimed, page.started, checkpoints, tails)

    async def _install_page(self, page: _Page, *, report: bool) -> None:
        try:
            if not page.checkpoints:
                return
            stored = [(c, page.tails.get(s, [])) for s, c in page.checkpoints.items()]
            loaded = await self._install(stored)
            if loaded:
                each = (time.perf_counter() - page.started) / len(loaded)
                for outcome in loaded.values():
                    if not isinstance(outcome, StreamCorrupt):
                        self._metrics.restored(each)
                    elif report:
                        log.error("%s", outcome.message)
        finally:
            self._release(page)

    def _release(self, page: _Page) -> None:
        restoring = self._restoring
        for stream_id in page.claimed:
            restoring.pop(stream_id, None)
        page.lock.release()

    async def _install(
        self, stored: list[tuple[Checkpoint, _Tail]]
    ) -> dict[str, StreamRecord | StreamCorrupt]:
        """Install stored streams (checkpoint, then the chain of their log tails) in one engine call.

        Specs and log tails are decoded on a worker thread, so a large batch (eager restore) never stalls
        the event loop; the states are decoded in batch on the engine thread (`RowBlobs`: a few
        microseconds per stream). A stream that cannot be decoded or does not fit its spec is reported,
        not installed.
        """
        decoded = await asyncio.to_thread(lambda: [self._decode(c, tail) for c, tail in stored])
        ready = [d for d in decoded if not isinstance(d, StreamCorrupt)]
        blobs, installed = self._blobs, {}
        if ready:
            installed = await self._scheduler.call(lambda engine: _install_all(engine, blobs, ready))
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
            self._ledger.loaded(
                stream_id,
                count=count,
                saved=d.checkpoint.step,
                head=d.plan.head,
                saved_position=d.checkpoint.log_position,
            )
            results[stream_id] = self._records.adopt(stream_id, record_from_meta(d.spec, meta))
        if replayed_total:
            self._metrics.observed("applied", "log", replayed_total)
        return results

    def _decode(self, checkpoint: Checkpoint, tail: _Tail) -> _Decoded | StreamCorrupt:
        """A stored stream's spec and log chain, or the error naming it (never a fresh model instead)."""
        stream_id = checkpoint.stream_id
        try:
            spec = self._spec(checkpoint.meta)
            plan = plan_replay(checkpoint.epoch, checkpoint.log_position, tail)
        except Exception as exc:
            return StreamCorrupt(f"checkpoint of {stream_id!r} is unreadable: {exc}", stream=stream_id)
        return _Decoded(checkpoint, spec, plan)

    def _spec(self, meta: dict[str, Any]) -> StreamSpec:
        """The spec a checkpoint's meta holds, validated once per distinct spec (streams share a few).

        The last one is checked first by equality of the stored dicts (written by ``model_dump``, so
        equal dicts are equal specs): a page's streams mostly share one, and dumping each stream's spec
        for the cache key cost more than the rest of its decode."""
        fmt, raw = meta.get(FORMAT_KEY), meta["spec"]
        last = self._last_spec
        if last is not None and last[0] == fmt and last[1] == raw:
            return last[2]
        key = (fmt, orjson.dumps(raw, option=orjson.OPT_SORT_KEYS))
        spec = self._specs.get(key)
        if spec is None:
            spec = StreamSpec.model_validate(upgrade_spec(meta["spec"], meta))
            if len(self._specs) >= 1024:
                self._specs.clear()
            self._specs[key] = spec
        self._last_spec = (fmt, raw, spec)
        return spec


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (and back on after, if it was on).

    An eager restore creates a few long-lived objects per stream (its checkpoint's meta, record, ledger
    rows): every full collection meanwhile walks all of those made so far again, a third of the CPU of
    a restore of 100,000 streams. They hold no reference cycles, so reference counting frees whatever
    of them dies meanwhile; nothing waits for the collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Page:
    """Streams claimed for a restore (held under ``lock``), and what the store holds for them."""

    lock: asyncio.Lock
    claimed: list[str]
    started: float
    checkpoints: dict[str, Checkpoint]
    tails: dict[str, _Tail]


@dataclass(frozen=True, slots=True)
class _Adoption:
    """What a takeover of the log found: each stream's shares of other owners' batch-log entries, the
    streams with per-stream log entries, the last of those read per stream, the streams stored."""

    shares: dict[str, list[LoggedBatch]]
    legacy: set[str]
    legacy_heads: dict[str, str]
    stored: set[str]


def _shares(entries: list[tuple[str, bytes]]) -> dict[str, list[LoggedBatch]]:
    """Batch-log entries split into each stream's shares, in log order."""
    out: dict[str, list[LoggedBatch]] = {}
    for position, payload in entries:
        try:
            parts = decode_group(position, payload)
        except Exception as exc:  # a damaged entry: report it, restore the rest
            log.error("batch log entry %s is unreadable (%s): skipped", position, exc)
            continue
        for stream_id, share in parts.items():
            out.setdefault(stream_id, []).append(share)
    return out


class _Decoded(NamedTuple):
    """A stored stream ready to install (a tuple: a frozen dataclass's ``__init__`` cost a microsecond per
    stream of an eager restore)."""

    checkpoint: Checkpoint
    spec: StreamSpec
    plan: ReplayPlan


def _install_all(engine: Engine, blobs: RowBlobs, ready: list[_Decoded]) -> dict[str, int | StreamCorrupt]:
    """On the engine thread: the checkpoints of each spec's streams in one load, then every stream's log
    chain through one live engine call (which applies each stream's observations in order); the
    observations replayed per stream installed (streams resident already are left as they are)."""
    out: dict[str, int | StreamCorrupt] = {}
    # by the spec object: `Restorer._spec` hands equal specs out as one object, and hashing a pydantic
    # model per stream (its fields) cost more than the rest of this loop
    by_spec: dict[int, tuple[StreamSpec, list[_Decoded]]] = {}
    for d in ready:
        if d.checkpoint.stream_id not in engine:  # else installed meanwhile: leave it as it is
            by_spec.setdefault(id(d.spec), (d.spec, []))[1].append(d)
    loaded: list[_Decoded] = []
    for spec, group in by_spec.values():
        ids, rows, errors = blobs.decode(
            engine.pool_of(spec).packed,
            [d.checkpoint.stream_id for d in group],
            [d.checkpoint.tensors for d in group],
            [d.checkpoint.meta for d in group],
        )
        for stream_id, exc in errors.items():
            message = (
                str(exc)
                if isinstance(exc, CorruptCheckpoint)
                else f"checkpoint of {stream_id!r} does not fit its spec: {exc}"
            )
            out[stream_id] = StreamCorrupt(message, stream=stream_id)
        if ids:
            engine.load_many(ids, spec, rows)
            fine = set(ids)
            loaded.extend(d for d in group if d.checkpoint.stream_id in fine)
    stream_ids: list[str] = []
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray | None] = []
    times: list[float | None] = []
    for d in loaded:
        applied = 0
        for entry in d.plan.apply:
            n = len(entry.inputs)
            stream_ids.extend([d.checkpoint.stream_id] * n)
            inputs.extend(entry.inputs)
            targets.extend(entry.targets)
            times.extend(entry.times if entry.times is not None else [None] * n)
            applied += n
        out[d.checkpoint.stream_id] = applied
    if stream_ids:
        timed = any(t is not None for t in times)
        engine.observe(stream_ids, inputs, targets, times if timed else None)
    return out
