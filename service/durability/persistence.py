"""Checkpoints, the durability log and bounded residency, between the registry, the scheduler and a store.

- ``log`` durability: every batch is appended to the store's log before it is applied and answered; a
  checkpoint records the last log position it includes and the log is trimmed behind it. Restoring a stream
  loads its checkpoint and replays its log tail, so nothing acknowledged is lost, even to SIGKILL.
- ``checkpoint`` durability: no log; a crash loses the changes since the last checkpoint.
- A background task checkpoints streams that changed every ``checkpoint_every_steps`` observations or
  ``checkpoint_interval_seconds``, in batched writes; SIGTERM writes every changed stream.
- Fencing: writes carry this process's epoch and the stream's observation count; the store refuses stale ones.
  Log entries carry the epoch and the position they build on (`service.durability`), so a replay follows
  exactly one owner's history: a stale process's appends are never replayed.
- With ``max_resident_streams``, least recently used streams are checkpointed and dropped from memory; the
  next observation restores them. A request naming many stored streams restores them in one batch.
- A store that is down makes log-mode ingestion answer 503 (nothing applied) while predictions keep working;
  checkpoints retry with backoff and everything resumes when the store returns. An append whose outcome is
  unknown (a timeout the store may still execute) marks its streams suspect: they take no new batch until
  whatever the log holds beyond their last applied entry is trimmed, so a 503 never turns into a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import IngestBatch
from trackin.service.domain.registry import StreamRecord, Template
from trackin.service.durability.payloads import ReplayPlan, decode_payload, encode_batches, plan_replay
from trackin.service.errors import StreamCorrupt, Unavailable
from trackin.service.settings import Settings
from trackin.service.store import (
    STREAM_ID_PATTERN,
    Checkpoint,
    CorruptCheckpoint,
    LogEntry,
    Store,
    StoreUnavailable,
    decode_state,
    encode_state,
    open_store,
)

if TYPE_CHECKING:
    from trackin.service.state import AppState

__all__ = ["Persistence", "open_persistence"]

log = logging.getLogger("trackin.persistence")

TEMPLATE_KIND = "template"
COUNT_KEY = "observations"


async def open_persistence(settings: Settings, state: AppState) -> Persistence | None:
    """The persistence layer for the configured store, or None when state is kept in memory only."""
    if settings.store == "memory":
        return None
    url = settings.redis_url if settings.store in ("auto", "redis") else None
    if settings.store == "redis" and not url:
        raise ValueError("store 'redis' needs TRACKIN_REDIS_URL")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(url, settings.data_dir, timeout=settings.store_timeout_seconds)
    return Persistence(store, settings, state)


class Persistence:
    """Implements the registry's ``Persistence`` protocol and the scheduler's ``before_apply`` hook."""

    def __init__(self, store: Store, settings: Settings, state: AppState) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self.log_mode = settings.durability == "log"
        self.epoch: int | None = None
        self.up = False
        # Every stored stream is loaded (restore_eagerly), or nobody asked for that: /readyz waits for it,
        # also when the store was down at start and the restore happens on a background retry.
        self.restored = not settings.restore_eagerly
        self._restore_lock = asyncio.Lock()
        self._known = 0
        self._counts: dict[str, int] = {}  # observations applied per resident stream (fencing "step")
        self._saved: dict[str, int] = {}  # count at the last accepted checkpoint
        self._log_pos: dict[str, str] = {}  # last log position appended per resident stream
        self._recent: OrderedDict[str, None] = OrderedDict()  # resident streams, least recently used first
        self._pinned: dict[str, int] = {}  # streams with validated batches not yet applied
        self._restoring: dict[str, asyncio.Lock] = {}
        self._evicting: dict[str, asyncio.Event] = {}
        # Streams whose last log append failed with an unknown outcome: the store may hold entries this
        # process never applied (a timed-out append that the store executed anyway). Until they are
        # settled (see _settle_suspects), new batches for them get 503 and they are not evicted.
        self._suspect: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        # One checkpoint write at a time: two overlapping writes of one stream at one step would make the
        # store refuse the second as stale (a false rejected_stale count, which pages someone).
        self._checkpoint_lock = asyncio.Lock()

    # ----- lifecycle --------------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.state.engine

    async def start(self) -> None:
        try:
            await self._connect()
        except StoreUnavailable as exc:
            log.warning("store unavailable at start (%s); retrying in the background", exc)
        self._task = asyncio.create_task(self._checkpoint_loop(), name="trackin-checkpoints")

    async def _connect(self) -> None:
        """Connect (once) and, with ``restore_eagerly``, finish the eager restore (until it succeeds)."""
        async with self._connect_lock:
            if self.epoch is None:
                await self._open_store()
        if not self.restored:
            async with self._restore_lock:
                if not self.restored:
                    await self._restore_all()
                    self.restored = True

    async def _open_store(self) -> None:
        await self.store.startup()
        self.epoch = await self.store.acquire_epoch()
        for name, value in (await self.store.list_records(TEMPLATE_KIND)).items():
            self.state.registry.templates[name] = Template(
                name=name,
                prefix=value["prefix"],
                spec=StreamSpec.model_validate(value["spec"]),
                idle_seconds=value["idle_seconds"],
            )
        self._known = await self.store.count_streams()
        self._set_up(True)
        log.info("store connected, owner epoch %d", self.epoch)

    async def stop(self) -> None:
        """Write every changed stream, then close the store (SIGTERM path)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.epoch is not None:
            try:
                await self.checkpoint(list(self._recent), force=False)
                await self._settle_suspects()
            except StoreUnavailable:
                log.error("store unavailable at shutdown: changes since the last checkpoint stay in the log")
        await self.store.shutdown()

    async def is_up(self) -> bool:
        if self.epoch is None:
            return False
        try:
            await self.store.ping()
        except StoreUnavailable:
            self._set_up(False)
            return False
        self._set_up(True)
        return True

    def known_streams(self) -> int:
        return max(self._known, len(self.engine))

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.state.metrics.set_store(up=up)

    # ----- hooks from the registry and the scheduler ------------------------------------------------------

    def after_apply(self, batches: list[IngestBatch], results: Any, seconds: float) -> None:
        """Count applied observations per stream (the fencing step) and refresh recency.

        Runs in the scheduler's worker right after the engine call, before any later job (such as a
        checkpoint export), so counts always match the engine state an export sees.
        """
        del results, seconds
        for batch in batches:
            for stream_id in batch.stream_ids:
                self._counts[stream_id] = self._counts.get(stream_id, 0) + 1
                self._recent[stream_id] = None
                self._recent.move_to_end(stream_id)
        self._wake.set()

    def touched(self, stream_ids: Iterable[str]) -> None:
        """Nothing to do: counting happens in ``after_apply``, in engine order."""

    def pin(self, stream_ids: Iterable[str]) -> None:
        """Keep streams resident while a request for them is between validation and apply."""
        for stream_id in stream_ids:
            self._pinned[stream_id] = self._pinned.get(stream_id, 0) + 1

    def unpin(self, stream_ids: Iterable[str]) -> None:
        for stream_id in stream_ids:
            pins = self._pinned.get(stream_id, 0) - 1
            if pins > 0:
                self._pinned[stream_id] = pins
            else:
                self._pinned.pop(stream_id, None)

    async def created(self, stream_id: str) -> None:
        """A new stream is checkpointed at once, so its creation survives a crash."""
        self._counts[stream_id] = 0
        self._saved.pop(stream_id, None)
        self._log_pos.pop(stream_id, None)
        self._recent[stream_id] = None
        await self._require_store()
        await self.checkpoint([stream_id], force=False)  # unsaved: written unless a pass just did
        self._known += 1
        self._wake.set()

    async def before_apply(self, batches: list[IngestBatch]) -> None:
        """Log mode: append the batch to the store's log; if that fails nothing is applied (503)."""
        if not self.log_mode:
            return
        await self._require_store()
        assert self.epoch is not None
        payloads = encode_batches(batches, self.epoch, self._log_pos)
        unsettled = self._suspect.intersection(payloads)
        if unsettled:
            raise Unavailable(
                f"stream {min(unsettled)!r} is settling after a store failure, nothing applied",
                retry_after=1,
                stream=min(unsettled),
            )
        entries = [LogEntry(stream_id, payload) for stream_id, payload in payloads.items()]
        try:
            positions = await self.store.append_log(entries)
        except StoreUnavailable as exc:
            # The append may still have happened (e.g. a timeout the store executed later): remember the
            # streams, so their log is cleaned of what this process never applied before they go on.
            self._suspect.update(payloads)
            self._set_up(False)
            self._wake.set()
            raise Unavailable(f"store unavailable, nothing applied: {exc}", retry_after=1) from None
        for entry, position in zip(entries, positions, strict=True):
            self._log_pos[entry.stream_id] = position

    async def _require_store(self) -> None:
        if self.epoch is None:
            try:
                await self._connect()
            except StoreUnavailable as exc:
                raise Unavailable(f"store unavailable: {exc}", retry_after=1) from None

    async def forget(self, stream_id: str) -> None:
        await self._require_store()
        assert self.epoch is not None
        try:
            await self.store.delete_stream(stream_id, self.epoch)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable: {exc}", retry_after=1) from None
        for table in (self._counts, self._saved, self._log_pos, self._recent):
            table.pop(stream_id, None)  # type: ignore[attr-defined]
        self._known = max(0, self._known - 1)

    async def stored_ids(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        await self._require_store()
        try:
            return await self.store.list_streams(prefix, limit, cursor)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable: {exc}", retry_after=1) from None

    async def save_template(self, template: Template) -> None:
        await self._require_store()
        value = {
            "prefix": template.prefix,
            "spec": template.spec.model_dump(mode="json"),
            "idle_seconds": template.idle_seconds,
        }
        try:
            await self.store.put_record(TEMPLATE_KIND, template.name, value)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable: {exc}", retry_after=1) from None

    async def delete_template(self, name: str) -> None:
        await self._require_store()
        try:
            await self.store.delete_record(TEMPLATE_KIND, name)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable: {exc}", retry_after=1) from None

    # ----- checkpoints ------------------------------------------------------------------------------------

    async def checkpoint(self, stream_ids: Sequence[str], *, force: bool) -> list[str]:
        """Write the given streams' state (only those changed since their last checkpoint unless ``force``).

        The export runs on the engine thread in queue order, so the state and the log positions read with
        it belong together: every batch logged before the export has been applied, none after.
        """
        async with self._checkpoint_lock:
            return await self._checkpoint(stream_ids, force=force)

    async def _checkpoint(self, stream_ids: Sequence[str], *, force: bool) -> list[str]:
        wanted = [s for s in stream_ids if force or self._counts.get(s, 0) != self._saved.get(s, -1)]
        if not wanted:
            return []
        counts = self._counts
        positions = self._log_pos

        def export(engine: Engine) -> list[tuple[str, dict[str, torch.Tensor], int, str]]:
            return [
                (s, engine.export(s), counts.get(s, 0), positions.get(s, "")) for s in wanted if s in engine
            ]

        exported = await self.state.scheduler.call(export)
        records = self.state.registry.records
        started = time.perf_counter()
        checkpoints = await asyncio.to_thread(self._encode, exported, records)
        assert self.epoch is not None
        try:
            outcome = await self.store.write_checkpoints(checkpoints)
        except StoreUnavailable:
            self._set_up(False)
            self.state.metrics.checkpoint_written("failed", len(checkpoints))
            self.state.metrics.checkpoint_pass(time.perf_counter() - started, ok=False)
            raise
        self._set_up(True)
        self.state.metrics.checkpoint_pass(time.perf_counter() - started, ok=True)
        if outcome.accepted:
            self.state.metrics.checkpoint_written("accepted", len(outcome.accepted))
        if outcome.rejected:
            self.state.metrics.checkpoint_written("rejected_stale", len(outcome.rejected))
            log.warning(
                "store refused %d stale checkpoint(s), e.g. %s", len(outcome.rejected), outcome.rejected[0]
            )
        by_id = {c.stream_id: c for c in checkpoints}
        trims: dict[str, str] = {}
        for stream_id in outcome.accepted:
            cp = by_id[stream_id]
            self._saved[stream_id] = cp.step
            if cp.log_position:
                trims[stream_id] = cp.log_position
        for stream_id in outcome.rejected:
            # Equal (epoch, step) is already stored (a retry after a partial write): nothing left to do.
            self._saved[stream_id] = by_id[stream_id].step
        if trims:
            await self.store.trim_logs(trims)
        return outcome.accepted

    def _encode(
        self, exported: list[tuple[str, dict[str, torch.Tensor], int, str]], records: dict[str, StreamRecord]
    ) -> list[Checkpoint]:
        assert self.epoch is not None
        out = []
        for stream_id, tensors, count, position in exported:
            record = records.get(stream_id)
            if record is None:
                continue
            meta: dict[str, Any] = {
                "spec": record.spec.model_dump(mode="json"),
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "template": record.template,
                "last_drift_at": record.last_drift_at,
                "drifts": record.drifts,
                COUNT_KEY: count,
            }
            blob, meta = encode_state(tensors, meta)
            out.append(Checkpoint(stream_id, self.epoch, count, position, meta, blob))
        return out

    async def _checkpoint_loop(self) -> None:
        backoff = 0.5
        last_pass = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.2)
            self._wake.clear()
            try:
                if self.epoch is None or not self.restored:
                    await self._connect()
                due_time = time.monotonic() - last_pass >= self.settings.checkpoint_interval_seconds
                every = self.settings.checkpoint_every_steps
                if due_time:
                    changed = [s for s in self._recent if self._counts.get(s, 0) != self._saved.get(s, -1)]
                else:
                    changed = [
                        s for s in self._recent if self._counts.get(s, 0) - self._saved.get(s, 0) >= every
                    ]
                if changed:
                    await self.checkpoint(changed, force=False)
                if self._suspect:
                    await self._settle_suspects()
                if due_time:
                    last_pass = time.monotonic()
                    if self.log_mode:
                        self.state.metrics.set_store(up=True, log_entries=await self.store.log_length())
                await self._evict_if_needed()
                backoff = 0.5
            except StoreUnavailable as exc:
                self._set_up(False)
                log.warning("checkpoint pass failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checkpoint pass failed")
                await asyncio.sleep(backoff)

    async def _settle_suspects(self) -> None:
        """Drop log entries that failed appends may have left behind, so they are never replayed.

        A 503 promised the client that nothing was applied. An append whose outcome was unknown may still
        be in the log, after the last position this process knows it wrote; replaying it after a crash
        would apply an observation the client was told was refused (and will likely send again). So for
        each suspect stream: checkpoint it (covering every entry it did apply), then trim whatever the
        log holds beyond that. New batches for the stream wait (503) until this is done.
        """
        for stream_id in sorted(self._suspect):
            if stream_id in self.engine:
                await self.checkpoint([stream_id], force=False)
                if self._counts.get(stream_id, 0) != self._saved.get(stream_id):
                    continue  # not written (refused as stale?): try again on the next pass
                orphans = await self.store.read_log(stream_id, self._log_pos.get(stream_id, ""))
                if orphans:
                    await self.store.trim_log(stream_id, orphans[-1][0])
                    log.warning(
                        "stream %r: dropped %d log entries of appends answered 503 (never applied)",
                        stream_id,
                        len(orphans),
                    )
            self._suspect.discard(stream_id)

    # ----- eviction and restore ---------------------------------------------------------------------------

    async def _evict_if_needed(self) -> None:
        """Checkpoint and drop least recently used streams beyond the residency limit.

        Victims are chosen and unregistered in one step on the event loop (no await in between), skipping
        streams pinned by requests in flight; a request arriving meanwhile restores the stream from the
        checkpoint just written, after waiting for the drop to finish.
        """
        limit = self.settings.max_resident_streams
        if limit is None or len(self.engine) <= limit:
            return
        excess = len(self.engine) - limit
        candidates = [
            s for s in self._recent if s not in self._pinned and s not in self._suspect and s in self.engine
        ][: excess * 2]
        if not candidates:
            return
        await self.checkpoint(candidates, force=False)
        victims = [
            s for s in candidates if s not in self._pinned and self._counts.get(s, 0) == self._saved.get(s)
        ][:excess]
        if not victims:
            return
        done = asyncio.Event()
        for s in victims:
            self.state.registry.records.pop(s, None)
            self._recent.pop(s, None)
            self._evicting[s] = done

        def drop(engine: Engine) -> None:
            for s in victims:
                if s in engine:
                    engine.remove(s)

        try:
            await self.state.scheduler.call(drop)
        finally:
            for s in victims:
                self._evicting.pop(s, None)
                self._log_pos.pop(s, None)
            done.set()
        self.state.metrics.evicted(len(victims))

    async def restore(self, stream_id: str) -> StreamRecord | None:
        """Load a stream that is not resident: its checkpoint, then its log tail. None if never stored.

        Concurrent callers for one stream share one load (a per-stream lock); a stream being evicted is
        waited for and then loaded again. Residency is decided by the registry's record, never by the
        engine alone: a stream is in the engine without a record while another request is installing it
        or an eviction is dropping it, and answering "unknown" then would be a spurious 404.
        """
        records = self.state.registry.records
        while True:
            evicting = self._evicting.get(stream_id)
            if evicting is not None:
                await evicting.wait()
                continue
            record = records.get(stream_id)
            if record is not None:
                return record
            await self._require_store()
            lock = self._restoring.setdefault(stream_id, asyncio.Lock())
            async with lock:
                if stream_id in self._evicting or stream_id in records:
                    continue  # evicted or restored by someone else while we waited: look again
                if stream_id in self.engine:
                    return None  # being created by put_stream right now, not stored yet
                started = time.perf_counter()
                try:
                    checkpoint = await self.store.read_checkpoint(stream_id)
                    if checkpoint is None:
                        return None
                    tail = (
                        await self.store.read_log(stream_id, checkpoint.log_position) if self.log_mode else []
                    )
                except StoreUnavailable as exc:
                    self._set_up(False)
                    raise Unavailable(f"store unavailable, cannot restore {stream_id!r}: {exc}") from None
                record = await self._load(checkpoint, tail)
                self.state.metrics.restored(time.perf_counter() - started)
            self._restoring.pop(stream_id, None)
            return record

    async def _load(self, checkpoint: Checkpoint, tail: list[tuple[str, bytes]]) -> StreamRecord:
        outcome = (await self._load_many([(checkpoint, tail)]))[checkpoint.stream_id]
        if isinstance(outcome, StreamCorrupt):
            raise outcome
        return outcome

    async def _load_many(
        self, stored: list[tuple[Checkpoint, list[tuple[str, bytes]]]]
    ) -> dict[str, StreamRecord | StreamCorrupt]:
        """Install stored streams (checkpoint, then the chain of their log tails) in one engine call.

        Decoding runs on a worker thread, so a large batch (eager restore) never stalls the event loop.
        A stream that cannot be decoded or does not fit its spec is reported, not installed.
        """
        decoded = await asyncio.to_thread(lambda: [_decode(c, tail) for c, tail in stored])
        ready = [d for d in decoded if not isinstance(d, StreamCorrupt)]

        def install(engine: Engine) -> dict[str, int | StreamCorrupt]:
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
                    engine.observe([stream_id] * len(entry.inputs), entry.inputs, entry.targets)
                    applied += len(entry.inputs)
                out[stream_id] = applied
            return out

        installed = await self.state.scheduler.call(install) if ready else {}
        results: dict[str, StreamRecord | StreamCorrupt] = {}
        replayed_total = 0
        records = self.state.registry.records
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
                existing = records.get(stream_id)
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
            self._counts[stream_id] = int(meta.get(COUNT_KEY, d.checkpoint.step)) + replayed
            self._saved[stream_id] = d.checkpoint.step
            if d.plan.head:
                self._log_pos[stream_id] = d.plan.head  # the base of this process's next append
            self._recent[stream_id] = None
            self._recent.move_to_end(stream_id)
            record = StreamRecord(
                spec=d.spec,
                created_at=float(meta.get("created_at", time.time())),
                updated_at=float(meta.get("updated_at", time.time())),
                template=meta.get("template"),
                last_drift_at=meta.get("last_drift_at"),
                drifts=int(meta.get("drifts", 0)),
            )
            results[stream_id] = records.setdefault(stream_id, record)
        if replayed_total:
            self.state.metrics.observed("applied", "log", replayed_total)
        self._wake.set()
        return results

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        """Restore the stored ones of many non-resident streams at once (a store read and an engine call
        per 1,000), e.g. before a batch of observations is validated stream by stream.

        Best effort: ids that are invalid, unknown or corrupt are left for `restore` to answer one by one.
        """
        records = self.state.registry.records
        wanted = [
            s
            for s in dict.fromkeys(stream_ids)
            if s not in records and s not in self._evicting and STREAM_ID_PATTERN.fullmatch(s)
        ]
        if len(wanted) < 2:
            return  # one stream: the ordinary path is as fast
        await self._require_store()
        try:
            for start in range(0, len(wanted), 1000):
                await self._restore_page(wanted[start : start + 1000], report=False)
        except StoreUnavailable as exc:
            self._set_up(False)
            raise Unavailable(f"store unavailable, cannot restore streams: {exc}") from None

    async def _restore_all(self) -> None:
        """Eager restore: every stored stream, a page at a time (one read, one engine call per page).

        Stops at the residency limit, if any. Streams a request is restoring meanwhile are left to it.
        """
        limit = self.settings.max_resident_streams
        cursor: str | None = None
        while True:
            ids, cursor = await self.store.list_streams("", 1000, cursor)
            if limit is not None:
                ids = ids[: max(0, limit - len(self.engine))]
            await self._restore_page(ids, report=True)
            if cursor is None or (limit is not None and len(self.engine) >= limit):
                return

    async def _restore_page(self, ids: Sequence[str], *, report: bool) -> None:
        """Restore the stored ones of ``ids`` that nobody else is restoring; ``report``: log corrupt ones."""
        locks: list[tuple[str, asyncio.Lock]] = []
        for stream_id in ids:
            lock = self._restoring.setdefault(stream_id, asyncio.Lock())
            if not lock.locked() and stream_id not in self.state.registry.records:
                await lock.acquire()  # free: returns at once
                locks.append((stream_id, lock))
        try:
            if not locks:
                return
            started = time.perf_counter()
            checkpoints = await self.store.read_checkpoints([s for s, _ in locks])
            tails = (
                await self.store.read_logs({s: c.log_position for s, c in checkpoints.items()})
                if self.log_mode
                else {}
            )
            loaded = await self._load_many([(c, tails.get(s, [])) for s, c in checkpoints.items()])
            if loaded:
                each = (time.perf_counter() - started) / len(loaded)
                for outcome in loaded.values():
                    if not isinstance(outcome, StreamCorrupt):
                        self.state.metrics.restored(each)
                    elif report:
                        log.error("%s", outcome.message)
        finally:
            for stream_id, lock in locks:
                lock.release()
                self._restoring.pop(stream_id, None)


@dataclass(frozen=True, slots=True)
class _Decoded:
    checkpoint: Checkpoint
    spec: StreamSpec
    tensors: dict[str, torch.Tensor]
    plan: ReplayPlan


def _decode(checkpoint: Checkpoint, tail: list[tuple[str, bytes]]) -> _Decoded | StreamCorrupt:
    """A stored stream made ready to install, or the error naming it (never a fresh model instead)."""
    stream_id = checkpoint.stream_id
    try:
        spec = StreamSpec.model_validate(checkpoint.meta["spec"])
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
