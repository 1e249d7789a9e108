"""The partitions this replica owns: each restored from its checkpoints, replayed, then applied live.

One `PartitionWorker` per owned partition reads the partition's subject of the log with an ordered
JetStream consumer and applies every message in sequence order through the registry, as the single-node
service applies requests. Observations are queued without waiting for the previous message's result, so
the scheduler batches them; creations and deletions wait for the store. Before each message the worker
checks its lease (`LeaseBook.valid`): a replica that was paused past its lease applies nothing more.
Each stream's ledger position is the sequence of the last message applied to it, and the checkpoint of a
stream records it, so a restore skips exactly what the checkpoint covers. After each checkpoint pass the
owner trims its partition's log up to what every stream's checkpoint covers (service/cluster/trim.py).

A message the owner cannot apply (an unexpected error, not a refusal the single-node service would give
nor an outage that is retried) is a poison message: it is copied to the dead-letter stream with the error,
counted, answered 500, and the partition goes on with the next message, instead of failing the partition
on every replica in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
import orjson
import pydantic
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from trackin.models.engine import Engine, Outcomes
from trackin.models.specs import StreamSpec
from trackin.service.cluster.book import LeaseBook
from trackin.service.cluster.columns import part_columns, shape_body
from trackin.service.cluster.jetstream import NATS_ERRORS, Link
from trackin.service.cluster.labels import PendingInputs
from trackin.service.cluster.messages import (
    DEAD_ERROR,
    DEAD_SEQ,
    EXPIRES,
    MSG_ID,
    NAMESPACE,
    OP,
    ORIGIN,
    OWNER,
    REPLACE,
    SEQ,
    STREAM,
    TOKEN,
    Answer,
    Replies,
)
from trackin.service.cluster.partitions import Names, partition_of
from trackin.service.cluster.persistence import Applying
from trackin.service.cluster.quotas import SharedQuotas
from trackin.service.cluster.store import LeaseFencedStore
from trackin.service.cluster.sweep import SWEEP_OP, IdleScan, sweep_body, swept, to_delete
from trackin.service.cluster.templates import carried
from trackin.service.cluster.trim import watermark
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.columns import Columns
from trackin.service.domain.ingest import IngestBatch
from trackin.service.domain.registry import Registry
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability import Checkpointer, Ledger, Restorer, StoreHealth
from trackin.service.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
    UnknownStream,
    error_body,
)
from trackin.service.security.namespace import Namespace
from trackin.service.tasks import stop_task
from trackin.service.transport.results import (
    columns_msgpack,
    is_series,
    result_json,
    results_json,
    shape_prediction,
    shape_width,
)
from trackin.service.transport.wire import ObservationIn, PredictIn, decode_json

__all__ = ["Owner", "OwnerParts", "PartitionWorker", "Tally"]

log = logging.getLogger("trackin.cluster")

_PAGE = 1000
_STOP_SECONDS = 1.0
_RETRIED: tuple[type[BaseException], ...] = (Unavailable, *NATS_ERRORS)
_SWEEP_STREAMS = 2000
"""Streams named per sweep message at most (NATS's payload limit is 1 MB)."""
_SWEEP_PUBLISH_SECONDS = 2.0


@dataclass(slots=True)
class Tally:
    """What the owner's partitions did, for the metrics: dead letters written, log trims made, idle
    template-made streams deleted by a sweep message."""

    dead_letters: int = 0
    trims: int = 0
    swept: int = 0


@dataclass(frozen=True, slots=True)
class OwnerParts:
    """What an owner applies messages with: the single-node service's parts, and the cluster's."""

    link: Link
    names: Names
    book: LeaseBook
    replica: str
    partitions: int
    replies: Replies
    applying: Applying
    registry: Registry
    scheduler: Scheduler
    catalog: Catalog
    ledger: Ledger
    checkpointer: Checkpointer
    restorer: Restorer
    store: LeaseFencedStore
    health: StoreHealth
    max_request_observations: int
    checkpoint_every_steps: int
    checkpoint_interval_seconds: float
    tally: Tally = field(default_factory=Tally)
    retention_seconds: float = 0.0
    """The log keeps the messages applied in this many last seconds, covered or not."""
    quotas: SharedQuotas | None = None
    """Tenant quotas: the restored streams count as held in the cluster's shared count."""
    idle: IdleScan | None = None
    """The replica's idle template-made streams, which the partitions propose to sweep (None: no sweep)."""
    sweep_every_seconds: float = 1.0
    pending: PendingInputs | None = None
    """Predictions waiting for labels: a stream the sweep deletes drops its own, as a DELETE does."""


class _Lapsed(Exception):
    """The lease lapsed while applying: stop at once."""


class PartitionWorker:
    """Restore, replay and serve one partition while the lease is valid."""

    def __init__(self, partition: int, token: int, parts: OwnerParts) -> None:
        self.partition = partition
        self.token = token
        self._parts = parts
        self.live = False
        """Caught up with the log as it was when the lease was taken: reads are answered."""
        self.applied_seq = 0
        self.last_seq = 0
        self.restore_seconds: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._reads: Subscription | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._stopping = False
        self.trimmed = 0
        """The log of the partition is trimmed up to this sequence (by this worker)."""
        self._marks: deque[tuple[float, int]] = deque()
        """(when, the sequence applied by then), one per trim attempt: what is older than the retention."""
        self.failed = False
        """The worker stopped on an unexpected error: the lease is given up so the partition is restored."""
        self._last_sweep = time.monotonic()
        self._proposed: dict[str, int] = {}
        """Streams a sweep message published here names, not applied yet: not proposed again meanwhile."""
        self._unapplied: dict[int, None] = {}
        """Sequences of queued observations the engine has not applied yet, in log order."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"trackin-partition-{self.partition}")

    async def stop(self) -> None:
        """Stop applying and answering after the message being applied (its answer still goes out, as do
        those of observations already queued); cancelled if that takes longer than a second."""
        self.live = False
        self._stopping = True
        if self._reads is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._reads.unsubscribe()
            self._reads = None
        # asyncio.wait, not wait_for under a suppress: the caller's own cancellation (the lease loop
        # cancelled at shutdown while it releases a partition) must go through, or that loop runs on.
        if self._task is not None and not (await asyncio.wait({self._task}, timeout=_STOP_SECONDS))[0]:
            await stop_task(self._task)

    def streams(self) -> list[str]:
        """The partition's resident streams."""
        p, n = self.partition, self._parts.partitions
        return [s for s, _ in self._parts.catalog.items() if partition_of(s, n) == p]

    async def checkpoint(self) -> None:
        """Write the partition's changed streams (fenced); called between two messages, or after stopping."""
        ledger = self._parts.ledger
        due = [s for s in self.streams() if ledger.changed(s)]
        if due:
            await self._parts.checkpointer.checkpoint(due)
        self._since_checkpoint, self._last_checkpoint = 0, time.monotonic()

    # ----- the loop ---------------------------------------------------------------------------------------

    async def _run(self) -> None:
        p = self.partition
        try:
            start = await self._until_valid(self._restore)
            self.last_seq = await self._until_valid(self._last_seq)
            sub = await self._until_valid(lambda: self._subscribe(start))
            if self.last_seq < start:
                await self._go_live()
            try:
                await self._consume(sub)
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await sub.unsubscribe()
        except _Lapsed:
            log.warning("partition %d: lease lapsed while applying; stopped", p)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partition %d: worker failed; giving the partition up", p)
            self.failed = True

    async def _until_valid(self, step: Callable[[], Awaitable[Any]]) -> Any:
        """Retry a step that needs NATS or Redis while the lease holds (backoff 0.2 s doubling to 2 s)."""
        backoff = 0.2
        while True:
            if self._stopping or not self._parts.book.valid(self.partition):
                raise _Lapsed
            try:
                return await step()
            except _RETRIED as exc:
                log.warning("partition %d: %s; retrying", self.partition, exc)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 2.0)

    async def _restore(self) -> int:
        """Install the partition's checkpoints; the sequence to replay from."""
        started = time.perf_counter()
        parts, p = self._parts, self.partition
        ids: list[str] = []
        cursor: str | None = None
        with parts.health.store_errors("store unavailable, cannot restore"):
            await parts.store.startup()  # idempotent: connects on the first call that finds Redis up
            while True:
                page, cursor = await parts.store.list_streams("", _PAGE, cursor)
                ids += [s for s in page if partition_of(s, parts.partitions) == p]
                if cursor is None:
                    break
        if len(ids) == 1:
            await parts.restorer.restore(ids[0])
        elif ids:
            await parts.restorer.prefetch(ids)
        positions = [int(parts.ledger.position(s) or 0) for s in ids if s in parts.catalog]
        if parts.quotas is not None:
            records = ((s, parts.catalog.record(s)) for s in ids)
            await parts.quotas.hold((s, r.spec) for s, r in records if r is not None)
        self.restore_seconds = time.perf_counter() - started
        log.info("partition %d: %d streams restored in %.3f s", p, len(positions), self.restore_seconds)
        return min(positions) + 1 if positions else 1

    async def _last_seq(self) -> int:
        try:
            last = await self._parts.link.js.get_last_msg(
                self._parts.names.log_stream, self._parts.names.log_subject(self.partition)
            )
        except nats.js.errors.NotFoundError:
            return 0
        return int(last.seq or 0)

    async def _subscribe(self, start: int) -> Subscription:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        return await self._parts.link.js.subscribe(
            self._parts.names.log_subject(self.partition), ordered_consumer=True, config=config
        )

    async def _go_live(self) -> None:
        self.live = True
        nc = self._parts.link.nc
        self._reads = await nc.subscribe(self._parts.names.read_subject(self.partition), cb=self._on_read)
        log.info("partition %d: live (token %d, log at %d)", self.partition, self.token, self.last_seq)

    async def _consume(self, sub: Subscription) -> None:
        parts, p = self._parts, self.partition
        while not self._stopping:
            try:
                msg = await sub.next_msg(timeout=0.25)
            except nats.errors.TimeoutError:
                msg = None
            if not parts.book.valid(p):
                raise _Lapsed
            if msg is not None:
                seq = msg.metadata.sequence.stream
                if seq > self.applied_seq:  # an ordered consumer may deliver again after a reset
                    await self._apply(msg, seq)
                    self.applied_seq = seq
                if not self.live and seq >= self.last_seq:
                    await self._go_live()
            if self.live and time.monotonic() - self._last_sweep >= parts.sweep_every_seconds:
                await self._propose_sweep()
            due = self._since_checkpoint >= parts.checkpoint_every_steps or (
                time.monotonic() - self._last_checkpoint >= parts.checkpoint_interval_seconds
            )
            if due:
                try:
                    await self.checkpoint()
                except Unavailable as exc:
                    log.warning("partition %d: checkpoint failed (%s); retrying later", p, exc)
                    self._last_checkpoint = time.monotonic()
                    continue
                if self.live:
                    await self._trim()

    def _retained(self) -> int:
        """The highest sequence applied at least ``retention_seconds`` ago (0: none yet)."""
        now, marks = time.monotonic(), self._marks
        marks.append((now, self.applied_seq))
        cutoff = now - self._parts.retention_seconds
        while len(marks) > 1 and marks[1][0] <= cutoff:
            marks.popleft()
        return marks[0][1] if marks[0][0] <= cutoff else 0

    async def _trim(self) -> None:
        """Purge the partition's messages every stream's checkpoint covers (one JetStream call)."""
        parts, p = self._parts, self.partition
        ledger = parts.ledger
        low = watermark(
            self._retained(), self.streams(), parts.store.covered, lambda s: int(ledger.position(s) or 0)
        )
        if low is None or low <= self.trimmed or not parts.book.valid(p):
            return
        try:
            await parts.link.js.purge_stream(
                parts.names.log_stream, seq=low + 1, subject=parts.names.log_subject(p)
            )
        except NATS_ERRORS as exc:
            log.warning("partition %d: trimming the log failed (%s); retrying later", p, exc)
            return
        self.trimmed = low
        parts.tally.trims += 1

    # ----- the idle sweep (service/cluster/sweep.py) ------------------------------------------------------

    def _position(self, stream: str) -> int:
        return int(self._parts.ledger.position(stream) or 0)

    async def _propose_sweep(self) -> None:
        """Log a sweep of the partition's idle template-made streams, each with the position seen now."""
        parts, p = self._parts, self.partition
        self._last_sweep = time.monotonic()
        if parts.idle is None:
            return
        # A stream whose last observation is queued but not applied has a stale ``updated_at``: not idle.
        settled = next(iter(self._unapplied), self.applied_seq + 1) - 1
        idle = parts.idle.idle(p, self._position)
        fresh = [(s, seen) for s, seen in idle.items() if seen <= settled and self._proposed.get(s) != seen]
        for start in range(0, len(fresh), _SWEEP_STREAMS):
            if not parts.book.valid(p):
                return
            chunk = dict(fresh[start : start + _SWEEP_STREAMS])
            headers = {OP: SWEEP_OP, MSG_ID: f"sweep-{uuid.uuid4().hex}"}
            try:
                await parts.link.js.publish(
                    parts.names.log_subject(p),
                    sweep_body(chunk),
                    headers=headers,
                    timeout=_SWEEP_PUBLISH_SECONDS,
                )
            except NATS_ERRORS as exc:
                log.warning("partition %d: logging a sweep failed (%s); trying again later", p, exc)
                return
            self._proposed.update(chunk)

    async def _sweep(self, raw: bytes, seq: int) -> None:
        """Apply a sweep message: delete each named stream nothing was applied to since the decision."""
        parts = self._parts
        named = swept(raw)
        for stream in to_delete(named, parts.catalog, self._position):
            parts.applying.seq[stream] = seq
            try:
                await self._until_valid(functools.partial(parts.registry.delete_stream, stream))
            except UnknownStream:
                continue
            finally:
                parts.applying.seq.pop(stream, None)
            parts.tally.swept += 1
            # Not on a replay: the bucket is not in the log, and by then it may hold the waiting
            # predictions of a stream made again under the id.
            if self.live and parts.pending is not None:
                await parts.pending.drop_stream(stream)
        for stream in named:
            self._proposed.pop(stream, None)

    # ----- applying one message ---------------------------------------------------------------------------

    async def _apply(self, msg: Msg, seq: int) -> None:
        """Apply one message; a poison message goes to the dead letters instead of stopping the partition."""
        try:
            await self._apply_one(msg, seq)
        except (_Lapsed, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("partition %d: message %d cannot be applied; dead-lettered", self.partition, seq)
            await self._dead_letter(msg, seq, exc)

    async def _dead_letter(self, msg: Msg, seq: int, exc: Exception) -> None:
        parts, p = self._parts, self.partition
        headers = dict(msg.headers or {})
        reply = _Reply(
            parts, self.token, seq, headers.get(STREAM, ""), headers.get(ORIGIN, ""), headers.get(MSG_ID, "")
        )
        dead = {
            **headers,
            MSG_ID: f"{parts.names.log_stream}-{seq}",  # a replay of the same message is deduplicated
            DEAD_SEQ: str(seq),
            DEAD_ERROR: f"{type(exc).__name__}: {exc}"[:500],
        }
        subject = parts.names.dead_subject(p)
        await self._until_valid(lambda: parts.link.js.publish(subject, msg.data, headers=dead))
        parts.tally.dead_letters += 1
        body = error_body("internal", f"the write at log sequence {seq} could not be applied (dead-lettered)")
        await reply.send(Answer(500, orjson.dumps(body)))

    async def _apply_one(self, msg: Msg, seq: int) -> None:
        parts = self._parts
        headers = msg.headers or {}
        op, stream = headers.get(OP, ""), headers.get(STREAM, "")
        if stream in parts.catalog and seq <= int(parts.ledger.position(stream) or 0):
            return  # in the stream's checkpoint already
        reply = _Reply(parts, self.token, seq, stream, headers.get(ORIGIN, ""), headers.get(MSG_ID, ""))
        expires = headers.get(EXPIRES)
        if expires is not None and msg.metadata.timestamp.timestamp() > float(expires):
            # Stored after its front gave up on it and answered 503: never applied, by anyone.
            await reply.send(_error(Unavailable("log unavailable, nothing applied", stream=stream)))
            return
        if op == "observe":
            namespace = Namespace(headers.get(NAMESPACE, ""))
            await self._observe(stream, msg.data, seq, reply, namespace, headers)
        elif op == "observe_many":
            await self._observe_many(msg.data, seq, reply, headers)
        elif op == "observe_columns":
            await self._observe_columns(msg.data, seq, reply, headers)
        elif op == "label":
            await self._label(stream, msg.data, seq, reply)
        elif op == SWEEP_OP:
            await self._sweep(msg.data, seq)
        elif op in ("put", "delete"):
            parts.applying.seq[stream] = seq
            try:
                answer = await self._until_valid(lambda: self._control(op, stream, msg.data, headers))
            finally:
                parts.applying.seq.pop(stream, None)
            if stream in parts.catalog:
                parts.ledger.logged(stream, str(seq))
            await reply.send(answer)
        else:
            await reply.send(_error(InvalidInput(f"unknown operation {op!r}", field="op")))

    async def _create(self, streams: Iterable[str | None], headers: dict[str, str], seq: int) -> None:
        """Create the streams a message names that do not exist yet from the templates it carries (never
        from this replica's mirror: a replay must create what the first apply created), checkpointed at
        the position before the message, whose observations are then applied to them."""
        templates = carried(headers)
        if not templates:
            return
        parts = self._parts
        for stream in dict.fromkeys(streams):
            template = templates.get(stream or "")
            if stream is None or template is None or stream in parts.catalog:
                continue
            create = functools.partial(
                parts.registry.put_stream, stream, template.spec, template=template.name
            )
            parts.applying.seq[stream] = seq - 1
            try:
                await self._until_valid(create)
            finally:
                parts.applying.seq.pop(stream, None)

    async def _observe(
        self, stream: str, raw: bytes, seq: int, reply: _Reply, namespace: Namespace, headers: dict[str, str]
    ) -> None:
        parts = self._parts
        before: dict[str, str] = {}
        try:
            if raw.lstrip()[:1] == b"[":
                items: list[ObservationIn] = decode_json(raw, list[ObservationIn], prefix="observations")
            else:
                items = [decode_json(raw, ObservationIn, prefix="observations[0]")]
            limit = parts.max_request_observations
            if len(items) > limit:
                raise PayloadTooLarge(
                    f"{len(items)} observations exceed the limit of {limit} per request", field="observations"
                )
            if not items:
                raise InvalidInput("no observations", field="observations")
            namespace.items(items, "observations")
            await self._create([stream], headers, seq)  # items may name no other stream
            before = self._touch({stream, *(item.stream for item in items)}, seq)  # a body may name streams
            batch, applied = await parts.registry.enqueue(items, default_stream=stream, prefix="observations")
        except ServiceError as exc:
            self._untouch(before)
            exc.stream = exc.stream or stream
            await reply.send(_error(exc))
            return
        self._since_checkpoint += len(items)
        self._answer_when(seq, batch, applied, reply, many=False)

    async def _observe_many(self, raw: bytes, seq: int, reply: _Reply, headers: dict[str, str]) -> None:
        """This partition's part of a multi-stream request (internal ids, checked here before any part was
        logged): the items whose stream's checkpoint does not cover ``seq`` yet, answered in row form."""
        parts, ledger = self._parts, self._parts.ledger
        before: dict[str, str] = {}
        try:
            items: list[ObservationIn] = decode_json(raw, list[ObservationIn], prefix="observations")

            def covered(stream: str | None) -> bool:
                return (
                    stream is not None
                    and stream in parts.catalog
                    and seq <= int(ledger.position(stream) or 0)
                )

            items = [item for item in items if not covered(item.stream)]
            await self._create((item.stream for item in items), headers, seq)
            before = self._touch({item.stream for item in items}, seq)
            if not items:  # a replay the checkpoints cover: nobody waits for it any more
                await reply.send(Answer(200, b'{"results":[]}'))
                return
            batch, applied = await parts.registry.enqueue(items, default_stream=None, prefix="observations")
        except ServiceError as exc:
            self._untouch(before)
            await reply.send(_error(exc))
            return
        self._since_checkpoint += len(items)
        self._answer_when(seq, batch, applied, reply, many=True)

    def _touch(self, streams: set[str | None], seq: int) -> dict[str, str]:
        """Move the resident ``streams``' ledger positions to ``seq`` (before queueing, so a checkpoint
        export records it with the state); their positions before, to put back if nothing was queued."""
        parts = self._parts
        before = {}
        for stream in streams:
            if stream is not None and stream in parts.catalog:
                before[stream] = parts.ledger.position(stream)
                parts.ledger.logged(stream, str(seq))
        return before

    def _untouch(self, before: dict[str, str]) -> None:
        """A refused message changed no state: its streams stay covered by their checkpoints, so they do not
        hold the log's trimming back (a refusal is given again alike on a replay from the checkpoint)."""
        for stream, position in before.items():
            if stream in self._parts.catalog:
                self._parts.ledger.logged(stream, position)

    async def _observe_columns(self, raw: bytes, seq: int, reply: _Reply, headers: dict[str, str]) -> None:
        """This partition's rows of a columnar body (checked here before any part was logged): the rows
        whose stream's checkpoint does not cover ``seq`` yet, answered with raw columns."""
        parts, ledger = self._parts, self._parts.ledger
        before: dict[str, str] = {}
        try:
            columns = part_columns(raw)
            covered = [s in parts.catalog and seq <= int(ledger.position(s) or 0) for s in columns.streams]
            if any(covered):  # a replay the checkpoints cover in part: keep the other rows
                keep = np.flatnonzero(~np.asarray(covered))
                columns = Columns(
                    [columns.streams[i] for i in keep],
                    *(
                        None if a is None else a[keep]
                        for a in (columns.x, columns.y, columns.value, columns.ts)
                    ),
                )
            await self._create(columns.streams, headers, seq)
            before = self._touch(set(columns.streams), seq)
            if not columns.streams:  # nobody waits for it any more
                await reply.send(Answer(200, msgspec.msgpack.encode({"dtype": "f8", "step": b""})))
                return
            batch, applied = await parts.registry.enqueue_columns(columns)
        except ServiceError as exc:
            self._untouch(before)
            await reply.send(_error(exc))
            return
        self._since_checkpoint += len(columns.streams)
        spec = batch.specs[columns.streams[0]]

        def render(outcomes: Outcomes) -> bytes:
            return columns_msgpack(outcomes, shape_width(spec), is_series(spec), None)

        self._answer_when(seq, batch, applied, reply, many=True, render=render)

    async def _label(self, stream: str, raw: bytes, seq: int, reply: _Reply) -> None:
        """A late label, logged with the inputs its prediction kept (service/cluster/labels.py): the step
        single-node's label applies, answered as single-node answers it."""
        parts = self._parts
        before = self._touch({stream}, seq)
        try:
            body: dict[str, Any] = orjson.loads(raw)
            request_id = body["request_id"]
            item = ObservationIn(x=body["x"], y=body["y"])
            batch, applied = await parts.registry.enqueue([item], default_stream=stream, prefix="label")
        except ServiceError as exc:
            self._untouch(before)
            exc.stream = exc.stream or stream
            # The label is checked as an observation (label[0].y); name the field as the client sent it.
            exc.field = exc.field.removeprefix("label[0].") if exc.field else exc.field
            await reply.send(_error(exc))
            return
        self._since_checkpoint += 1
        spec = batch.specs[stream]

        def render(outcomes: Outcomes) -> bytes:
            return orjson.dumps({"request_id": request_id, **result_json(spec, outcomes.items()[0])})

        self._answer_when(seq, batch, applied, reply, many=False, render=render)

    def _answer_when(
        self,
        seq: int,
        batch: IngestBatch,
        applied: asyncio.Future[Outcomes],
        reply: _Reply,
        *,
        many: bool,
        render: Callable[[Outcomes], bytes] | None = None,
    ) -> None:
        """Answer once the batch is applied, without holding up the next message (the scheduler batches);
        ``render``: the answer's body (default: the row form)."""

        def rows(outcomes: Outcomes) -> bytes:
            uniform = batch.x is not None  # columnar: one kind and width
            results = results_json(batch.stream_ids, batch.specs, outcomes, many=many, uniform=uniform)
            return orjson.dumps({"results": results})

        async def answer() -> None:
            try:
                outcomes: Outcomes = await applied
                await reply.send(Answer(200, (render or rows)(outcomes)))
            except ServiceError as exc:
                await reply.send(_error(exc))
            except Exception:
                log.exception("partition %d: applying %s failed", self.partition, batch.stream_ids[:3])
                await reply.send(Answer(500, orjson.dumps(error_body("internal", "internal error"))))
            finally:
                self._unapplied.pop(seq, None)

        self._unapplied[seq] = None

        task = asyncio.create_task(answer())
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _control(self, op: str, stream: str, raw: bytes, headers: dict[str, str]) -> Answer:
        """A creation or deletion; ``Unavailable`` (the store is down) is retried by the caller, so the
        log's order is kept: nothing after it in the partition is applied before it."""
        registry = self._parts.registry
        try:
            if op == "delete":
                await registry.delete_stream(stream)
                return Answer(204, b"")
            try:
                spec = StreamSpec.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first.get("loc", ())) or "body"
                raise InvalidInput(f"{field}: {first.get('msg')}", field=field, stream=stream) from None
            outcome = await registry.put_stream(stream, spec, replace=headers.get(REPLACE) == "1")
            body = await registry.describe(stream)
            status = 201 if outcome == "created" else 200
            return Answer(status, orjson.dumps({"outcome": outcome, **body}))
        except Unavailable:
            raise
        except ServiceError as exc:
            exc.stream = exc.stream or stream
            return _error(exc)

    # ----- reads ------------------------------------------------------------------------------------------

    async def _on_read(self, msg: Msg) -> None:
        if not self.live or not self._parts.book.valid(self.partition) or not msg.reply:
            return  # not ours (any more): stay silent, the owner answers
        headers = msg.headers or {}
        op, stream = headers.get(OP, ""), headers.get(STREAM, "")
        registry = self._parts.registry
        try:
            if op == "describe":
                answer = Answer(200, orjson.dumps(await registry.describe(stream)))
            elif op == "predict":
                body: PredictIn = decode_json(msg.data or b"{}", PredictIn)
                spec, values = await registry.predict(stream, body.x, body.request_id)
                out: dict[str, Any] = {"stream": stream, "prediction": shape_prediction(spec, values)}
                answer = Answer(200, orjson.dumps(out))
            elif op == "check_columns":  # rows of a columnar body, before any part is logged
                columns = part_columns(msg.data)
                specs = await registry.column_specs(columns, _known(headers))
                answer = Answer(200, shape_body(specs[columns.streams[0]], columns, specs))
            elif op == "check":  # a part of a multi-stream request, before any part is logged
                part: list[ObservationIn] = decode_json(msg.data, list[ObservationIn], prefix="observations")
                await registry.check(part, prefix="observations", known=_known(headers))
                answer = Answer(204, b"")
            else:
                answer = _error(InvalidInput(f"unknown operation {op!r}", field="op"))
        except ServiceError as exc:
            exc.stream = exc.stream or stream
            answer = _error(exc)
        if not self._parts.book.valid(self.partition):
            return
        with contextlib.suppress(*NATS_ERRORS):
            await self._parts.link.nc.publish(msg.reply, answer.body, headers=answer.nats_headers(""))


class _Reply:
    """Where the answer to one logged write goes: the waiting front here, or another replica."""

    def __init__(
        self, parts: OwnerParts, token: int, seq: int, stream: str, origin: str, msg_id: str
    ) -> None:
        self._parts = parts
        self._token = token
        self._seq = seq
        self._stream = stream
        self._origin = origin
        self._msg_id = msg_id

    async def send(self, answer: Answer) -> None:
        parts = self._parts
        if not self._msg_id or not self._origin:
            return
        if self._origin == parts.replica:
            parts.replies.deliver(self._msg_id, answer)
            return
        subject = parts.names.reply_subject(self._origin)
        headers = {**answer.nats_headers(self._msg_id), OWNER: parts.replica, TOKEN: str(self._token)}
        headers[STREAM] = self._stream
        headers[SEQ] = str(self._seq)
        with contextlib.suppress(*NATS_ERRORS):
            await parts.link.nc.publish(subject, answer.body, headers=headers)


def _known(headers: dict[str, str]) -> dict[str, StreamSpec]:
    """The specs of the streams a check may find missing, from the templates it carries."""
    return {stream: template.spec for stream, template in carried(headers).items()}


def _error(exc: ServiceError) -> Answer:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}
    return Answer(exc.status, orjson.dumps(exc.body()), headers)


class Owner:
    """The `trackin.service.cluster.leases.Owners` of this replica: a worker per owned partition."""

    def __init__(self, parts: OwnerParts) -> None:
        self._parts = parts
        self.workers: dict[int, PartitionWorker] = {}

    async def take(self, partition: int, token: int) -> None:
        worker = PartitionWorker(partition, token, self._parts)
        self.workers[partition] = worker
        worker.start()

    async def drop(self, partition: int, *, lapsed: bool) -> None:
        worker = self.workers.pop(partition, None)
        if worker is None:
            return
        await worker.stop()
        if not lapsed:
            try:
                await worker.checkpoint()
            except Unavailable as exc:
                log.warning("partition %d: checkpoint at release failed (%s)", partition, exc)
        await self._unload(worker.streams())

    async def _unload(self, stream_ids: list[str]) -> None:
        """Drop streams from memory (not from the store): their partition is someone else's now."""
        parts = self._parts
        for stream_id in stream_ids:
            parts.catalog.remove(stream_id)
            parts.ledger.forget(stream_id)
        parts.store.forget(stream_ids)

        def remove(engine: Engine) -> None:
            for stream_id in stream_ids:
                if stream_id in engine:
                    engine.remove(stream_id)

        await parts.scheduler.call(remove)

    def failed(self) -> list[int]:
        return sorted(p for p, w in self.workers.items() if w.failed)

    async def close(self) -> None:
        """Release the store's connections (after every partition was dropped)."""
        await self._parts.store.shutdown()

    def replay_lag(self) -> int:
        """Messages the partitions still replaying are behind the log as it was when taken."""
        return sum(max(0, w.last_seq - w.applied_seq) for w in self.workers.values() if not w.live)
