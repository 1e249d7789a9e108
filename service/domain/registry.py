"""The service's domain operations on streams and templates; route handlers call one of these each.

A stream's learned state lives in the engine; the catalog keeps what the engine does not (its spec, times,
the template it came from), `PendingLabels` the late-label inputs. All engine access goes through the
scheduler; storing, restoring and evicting streams through `Persistence` (durability, or `InMemory`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import numpy as np

from trackin.models.engine import Engine, ItemResult, MemoryBudgetError, Outcomes, UnknownStreamError
from trackin.models.specs import ARModel, StreamSpec, TrackModel
from trackin.service.domain import series_times
from trackin.service.domain.budget import check_stream_bytes, over_budget
from trackin.service.domain.catalog import Catalog, StreamRecord, Template
from trackin.service.domain.columns import Columns, build_columns
from trackin.service.domain.ingest import IngestBatch, build_batch, check_vector
from trackin.service.domain.labels import PendingLabels
from trackin.service.domain.persistence import Persistence
from trackin.service.domain.quotas import TenantQuotas
from trackin.service.domain.scheduler import Scheduler
from trackin.service.errors import InvalidInput, SpecConflict, StreamCorrupt, UnknownRequest, UnknownStream
from trackin.service.ids import check_internal_id
from trackin.service.transport.wire import ObservationIn

__all__ = ["Registry"]

Outcome = Literal["created", "unchanged", "replaced"]
T = TypeVar("T")
_NONE: Mapping[str, StreamSpec] = MappingProxyType({})


class Registry:
    """Streams and templates: create, describe, list, delete; observe, predict, label.

    Every operation that uses a stream holds it resident (`Persistence.hold`) from the moment it looks
    the stream up until it is done with it, so bounded residency never drops a stream under a request.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        labels: PendingLabels,
        catalog: Catalog,
        persistence: Persistence,
        *,
        max_stream_bytes: int | None = None,
        quotas: TenantQuotas | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._max_stream_bytes = max_stream_bytes
        self._labels = labels
        self._catalog = catalog
        self._persistence = persistence
        self._creating: dict[str, asyncio.Lock] = {}
        self._quotas = quotas

    # ----- streams ----------------------------------------------------------------------------------------

    async def put_stream(
        self, stream_id: str, spec: StreamSpec, *, replace: bool = False, template: str | None = None
    ) -> Outcome:
        check_internal_id(stream_id)
        if self._max_stream_bytes is not None:
            check_stream_bytes(spec, self._max_stream_bytes, stream=stream_id)
        damaged = False
        try:
            existing = self._catalog.record(stream_id) or await self._persistence.restore(stream_id)
        except StreamCorrupt:
            if not replace:
                raise  # never silently replaced by a fresh model: replacing is the caller's decision
            await self.delete_stream(stream_id)
            existing, damaged = None, True
        if existing is not None and existing.spec == spec:
            return "unchanged"
        if existing is not None and not replace:
            raise SpecConflict(
                f"stream {stream_id!r} exists with a different spec; use ?replace=true to replace it",
                field="spec",
                stream=stream_id,
            )
        if self._quotas is not None:
            await self._quotas.check(stream_id, spec, existing.spec if existing is not None else None)
        if existing is not None:
            await self._scheduler.call(lambda engine: self._check_budget(engine, spec, stream_id))
            await self.delete_stream(stream_id)  # only once the new spec is known to fit
        now = time.time()

        def create(engine: Engine) -> StreamSpec:
            self._check_budget(engine, spec, stream_id)
            return engine.add(stream_id, spec).spec

        # The engine keeps one object per distinct spec. Recording that one lets the scheduler's check that a
        # batch's specs are still current compare an object with itself: 0.7 us instead of 3.7 per stream.
        shared = await self._scheduler.call(create)
        record = StreamRecord(spec=shared, created_at=now, updated_at=now, template=template)
        record.series_time = series_times.UNSEEN if series_times.timed(spec) else None
        self._catalog.add(stream_id, record)
        try:
            await self._persistence.created(stream_id)
        except BaseException:
            # Not durable, so not created: undo, leaving no half-made stream behind.
            self._catalog.remove(stream_id)
            await self._scheduler.call(lambda engine: engine.remove(stream_id))
            raise
        return "created" if existing is None and not damaged else "replaced"

    async def put_streams(self, items: Sequence[tuple[str, StreamSpec]]) -> dict[str, Outcome]:
        """Create many streams, all or nothing: each ``(id, spec)`` is checked (id, size, no other spec
        under the id, the memory budget for all of them) before any is made; then one engine call adds them
        and one store write per page makes them durable. An id that exists with the same spec is
        ``unchanged``; with another spec the whole request is refused (409): a bulk call never replaces."""
        ids: dict[str, int] = {}
        sized: set[StreamSpec] = set()  # specs are hashable: each distinct one is sized once, not per stream
        for i, (stream_id, spec) in enumerate(items):
            check_internal_id(stream_id, field=f"streams[{i}].id")
            if stream_id in ids:
                raise InvalidInput(
                    f"stream {stream_id!r} is given twice (streams[{ids[stream_id]}] and streams[{i}])",
                    field=f"streams[{i}].id",
                    stream=stream_id,
                )
            ids[stream_id] = i
            if self._max_stream_bytes is not None and spec not in sized:
                check_stream_bytes(spec, self._max_stream_bytes, field=f"streams[{i}].spec", stream=stream_id)
                sized.add(spec)
        unknown = [s for s in ids if s not in self._catalog]
        stored = await self._persistence.stored_among(unknown) if unknown else set()
        if stored:
            await self._persistence.prefetch(stored)
        outcomes: dict[str, Outcome] = {}
        for stream_id, i in ids.items():
            record = self._catalog.record(stream_id)
            if record is None and stream_id in stored:
                raise SpecConflict(
                    f"stream {stream_id!r} is stored but could not be restored; delete it first",
                    field=f"streams[{i}].id",
                    stream=stream_id,
                )
            if record is not None or stream_id in self._creating:
                if record is None or record.spec != items[i][1]:
                    raise SpecConflict(
                        f"stream {stream_id!r} exists with a different spec (a bulk call never replaces)",
                        field=f"streams[{i}].spec",
                        stream=stream_id,
                    )
                outcomes[stream_id] = "unchanged"
        new = [(s, spec) for s, spec in items if s not in outcomes]
        if not new:
            return outcomes
        if self._quotas is not None:  # one tenant's quota: each new stream counts as pending once checked
            for stream_id, spec in new:
                await self._quotas.check(stream_id, spec)

        def create(engine: Engine) -> list[StreamSpec]:
            added: list[str] = []
            try:
                shared = []
                for stream_id, spec in new:
                    if stream_id in engine:  # a concurrent single creation won the id meanwhile
                        raise SpecConflict(
                            f"stream {stream_id!r} was created meanwhile", field="streams", stream=stream_id
                        )
                    self._check_budget(engine, spec, stream_id)
                    shared.append(engine.add(stream_id, spec).spec)
                    added.append(stream_id)
                return shared
            except BaseException:
                for stream_id in added:
                    engine.remove(stream_id)
                raise

        shared = await self._scheduler.call(create)
        now = time.time()
        for (stream_id, spec), made in zip(new, shared, strict=True):
            record = StreamRecord(spec=made, created_at=now, updated_at=now, template=None)
            record.series_time = series_times.UNSEEN if series_times.timed(spec) else None
            self._catalog.add(stream_id, record)
        new_ids = [s for s, _ in new]
        try:
            await self._persistence.created_many(new_ids)
        except BaseException:
            for stream_id in new_ids:  # not durable, so not created: undo all of them
                self._catalog.remove(stream_id)

            def remove(engine: Engine) -> None:
                for stream_id in new_ids:
                    if stream_id in engine:
                        engine.remove(stream_id)

            await self._scheduler.call(remove)
            raise
        outcomes.update(dict.fromkeys(new_ids, "created"))
        return outcomes

    @staticmethod
    def _check_budget(engine: Engine, spec: StreamSpec, stream_id: str) -> None:
        try:
            engine.check_budget(spec)
        except MemoryBudgetError as error:
            raise over_budget(error, stream_id) from None

    async def delete_stream(self, stream_id: str) -> None:
        check_internal_id(stream_id)
        if stream_id not in self._catalog and not await self._stored(stream_id):
            raise UnknownStream(f"unknown stream {stream_id!r}", stream=stream_id)

        def remove(engine: Engine) -> None:
            if stream_id in engine:
                engine.remove(stream_id)

        await self._scheduler.call(remove)
        self._catalog.remove(stream_id)
        self._labels.drop_stream(stream_id)
        await self._persistence.forget(stream_id)

    async def _stored(self, stream_id: str) -> bool:
        """Restored from the store, or stored but unreadable (so a corrupt stream can still be deleted)."""
        try:
            return await self._persistence.restore(stream_id) is not None
        except StreamCorrupt:
            return True

    async def describe(self, stream_id: str) -> dict[str, Any]:
        """Spec and figures of one stream."""
        async with self._persistence.hold([stream_id]):
            record = await self.require(stream_id, create=False)
            f = await self._read(stream_id, lambda engine: engine.figures(stream_id))

        def num(value: float) -> float | None:
            return None if value != value else value

        return {
            "stream": stream_id,
            "spec": record.spec.model_dump(mode="json"),
            "template": record.template,
            "figures": {
                "steps": f.steps,
                "last_loss": num(f.last_loss),
                "loss_ewma": num(f.loss_ewma),
                "grad_norm": num(f.grad_norm),
                "beta": num(f.beta),
                "eps_norm": num(f.eps_norm),
                "model_loss": num(f.model_loss),
                "naive_loss": num(f.naive_loss),
                "skill": num(f.skill),
                "mix_weight": num(f.mix_weight),
                "nonfinite_skips": f.nonfinite_skips,
                "warming": f.warming,
                "drifts": f.drifts,
                "last_drift_step": f.last_drift_step,
                "last_drift_at": record.last_drift_at,
            },
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }

    async def _read(self, stream_id: str, fn: Callable[[Engine], T]) -> T:
        """A read of the engine (not queued behind observations); a stream whose removal (a delete, a
        template sweep, an eviction) finished after its record was looked up is unknown (404), not a 500."""
        try:
            return await self._scheduler.read(fn)
        except UnknownStreamError:
            raise UnknownStream(f"unknown stream {stream_id!r}", stream=stream_id) from None

    async def list_streams(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """Stream ids in order, resident or stored; ``cursor`` is the last id of the previous page."""
        stored, _ = await self._persistence.stored_ids(prefix, limit + 1, cursor)
        ids = sorted({*self._catalog.ids(prefix), *stored})
        start = bisect.bisect_right(ids, cursor) if cursor else 0
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        return page, (page[-1] if more and page else None)

    async def require(self, stream_id: str, *, create: bool = True) -> StreamRecord:
        """The stream's record, restoring it from the store or creating it from a template if needed
        (``create=False`` for reads, which must not bring streams into being)."""
        record = self._catalog.record(stream_id)
        if record is not None:
            return record
        check_internal_id(stream_id)
        record = await self._persistence.restore(stream_id)
        if record is not None:
            return record
        template = self._catalog.template_for(stream_id) if create else None
        if template is None:
            raise UnknownStream(f"unknown stream {stream_id!r}", stream=stream_id)
        lock = self._creating.setdefault(stream_id, asyncio.Lock())
        async with lock:
            if stream_id not in self._catalog:
                await self.put_stream(stream_id, template.spec, template=template.name)
        self._creating.pop(stream_id, None)
        record = self._catalog.record(stream_id)
        assert record is not None
        return record

    # ----- templates --------------------------------------------------------------------------------------

    async def put_template(self, template: Template) -> Outcome:
        if self._max_stream_bytes is not None:
            check_stream_bytes(template.spec, self._max_stream_bytes, field="spec.model")
        old = self._catalog.template(template.name)
        if old == template:
            return "unchanged"
        await self._persistence.save_template(template)  # stored first: a 503 leaves nothing changed
        self._catalog.put_template(template)
        return "created" if old is None else "replaced"

    async def delete_template(self, name: str) -> None:
        if self._catalog.template(name) is None:
            raise UnknownStream(f"unknown template {name!r}", field="name")
        await self._persistence.delete_template(name)
        self._catalog.remove_template(name)

    def templates(self) -> list[Template]:
        return self._catalog.templates()

    async def sweep_idle(self) -> list[str]:
        """Remove template-created streams idle for longer than their template allows."""
        now = time.time()
        idle = []
        for stream_id, record in self._catalog.templated():
            template = self._catalog.template(record.template) if record.template else None
            if template is not None and now - record.updated_at > template.idle_seconds:
                idle.append(stream_id)
        for stream_id in idle:
            if stream_id in self._catalog:
                await self.delete_stream(stream_id)
        return idle

    # ----- observations -----------------------------------------------------------------------------------

    async def enqueue(
        self,
        items: Sequence[ObservationIn],
        *,
        default_stream: str | None,
        prefix: str,
        transport: str = "rest",
    ) -> tuple[IngestBatch, asyncio.Future[Outcomes]]:
        """Resolve the streams (templates, restores), check every item against its spec, and queue the
        batch: its order among all requests is fixed here. The future gets the per-item results once the
        batch is applied; its streams stay resident until then."""
        # Stored streams come back in one batch, not one by one; with every stored stream resident there
        # is nothing to look for (a pass over a thousand ids per request otherwise).
        if not self._persistence.all_resident():
            await self._persistence.prefetch(filter(None, map(_STREAM, items)))  # lazy: in C where consumed
        async with self._persistence.hold(_named(items, default_stream)) as held:
            batch = await self._validate(items, default_stream=default_stream, prefix=prefix)
            batch.transport = transport
            applied = self._submit(batch)
            held.until(applied)
        return batch, applied

    async def enqueue_columns(
        self, columns: Columns, *, transport: str = "rest"
    ) -> tuple[IngestBatch, asyncio.Future[Outcomes]]:
        """`enqueue` for a columnar body (every stream of one shape): checked as arrays, queued whole."""
        named = dict.fromkeys(columns.streams)
        if not self._persistence.all_resident():
            await self._persistence.prefetch(named)  # the store keeps the uncatalogued (Catalog.missing)
        async with self._persistence.hold(named) as held:
            # All catalogued (the common case): their specs in one pass in C, no Python per stream. A
            # catalogued id was checked when its stream was made; only new ids need the check.
            specs = self._catalog.specs_of(named)
            if specs is None:
                specs = {}
                record_of = self._catalog.record
                for i, stream in enumerate(columns.streams):
                    if stream not in specs:
                        record = record_of(stream) if type(stream) is str else None
                        if record is None:
                            check_internal_id(stream, field=f"streams[{i}]")
                            record = await self.require(stream)
                        specs[stream] = record.spec
            batch = build_columns(columns, specs)
            batch.transport = transport
            applied = self._submit(batch)
            held.until(applied)
        return batch, applied

    async def column_specs(
        self, columns: Columns, known: Mapping[str, StreamSpec] = _NONE
    ) -> dict[str, StreamSpec]:
        """The specs of a columnar body's streams, as `enqueue_columns` finds them but creating none (a
        cluster owner's check of its rows, service/cluster/columns.py, then `build_columns`); ``known``:
        the specs of streams that do not exist yet but would be created from a template."""
        specs: dict[str, StreamSpec] = {}
        for i, stream in enumerate(columns.streams):
            if stream not in specs:
                check_internal_id(stream, field=f"streams[{i}]")
                specs[stream] = await self._spec(stream, known)
        return specs

    async def _spec(self, stream: str, known: Mapping[str, StreamSpec]) -> StreamSpec:
        if stream not in self._catalog and stream in known:
            return known[stream]
        return (await self.require(stream, create=False)).spec

    async def check(
        self, items: Sequence[ObservationIn], *, prefix: str, known: Mapping[str, StreamSpec] = _NONE
    ) -> None:
        """Refuse what `enqueue` would refuse, queueing and moving nothing: a cluster owner's check of its
        part of a multi-stream request, before any part of it is logged (service/cluster/many.py);
        ``known``: as `column_specs`."""
        batch = await self._build(items, default_stream=None, prefix=prefix, create=False, known=known)
        await self._check_times(batch, prefix, commit=False)

    async def _validate(
        self, items: Sequence[ObservationIn], *, default_stream: str | None, prefix: str
    ) -> IngestBatch:
        batch = await self._build(items, default_stream=default_stream, prefix=prefix)
        await self._check_times(batch, prefix)
        return batch

    async def _build(
        self,
        items: Sequence[ObservationIn],
        *,
        default_stream: str | None,
        prefix: str,
        create: bool = True,
        known: Mapping[str, StreamSpec] = _NONE,
    ) -> IngestBatch:
        specs: dict[str, StreamSpec] = {}
        if default_stream is not None:
            specs[default_stream] = (await self.require(default_stream)).spec
        record_of = self._catalog.record
        for i, item in enumerate(items):
            stream = item.stream
            if stream is not None and stream not in specs:
                # a catalogued id was checked when its stream was made: only new ids need the check
                record = record_of(stream) if create else None
                if record is not None:
                    specs[stream] = record.spec
                    continue
                check_internal_id(stream, field=f"{prefix}[{i}].stream")
                if create:
                    specs[stream] = (await self.require(stream)).spec
                else:
                    specs[stream] = await self._spec(stream, known)
        return build_batch(items, specs, default_stream=default_stream, prefix=prefix)

    async def _check_times(self, batch: IngestBatch, prefix: str, *, commit: bool = True) -> None:
        """Refuse a series time that is not after its stream's last one (queued requests included), before
        anything is applied; then (``commit``) the queued times move on (no await between this and the
        submit)."""
        if batch.y is not None:
            return  # columnar with targets: supervised streams only, no times to check
        timed = [s for s, spec in batch.specs.items() if series_times.timed(spec)]
        if not timed:
            return
        records = {s: r for s in timed if (r := self._catalog.record(s)) is not None}
        unknown = [s for s, r in records.items() if r.series_time is None]
        if unknown:  # restored streams: their time from the engine, once

            def read(engine: Engine) -> dict[str, series_times.SeriesTime]:
                return {s: series_times.from_state(engine.export(s)) for s in unknown if s in engine}

            for s, known in (await self._scheduler.call(read)).items():
                if records[s].series_time is None:
                    records[s].series_time = known
        current = {s: r.series_time for s, r in records.items() if r.series_time is not None}
        moved_to = series_times.advance(batch, current, prefix)
        if commit:
            for s, moved in moved_to.items():
                records[s].series_time = moved

    def _submit(self, batch: IngestBatch) -> asyncio.Future[Outcomes]:
        future = self._scheduler.submit(batch)
        future.add_done_callback(lambda done: self._note(batch, done))
        return future

    def _note(self, batch: IngestBatch, done: asyncio.Future[Outcomes]) -> None:
        """An applied batch: its streams' update times, and the drifts it detected."""
        distinct = batch.specs  # each of the batch's streams once
        if done.cancelled() or done.exception() is not None:
            for stream_id in distinct:  # the queued times did not apply: read them again
                record = self._catalog.record(stream_id)
                if record is not None and record.series_time is not None:
                    record.series_time = None
            return
        now = time.time()
        for stream_id in distinct:
            record = self._catalog.record(stream_id)
            if record is not None:
                record.updated_at = now
        for i in np.flatnonzero(done.result().drift).tolist():
            record = self._catalog.record(batch.stream_ids[i])
            if record is not None:
                record.last_drift_at = now
                record.drifts += 1

    async def predict(
        self, stream_id: str, x: list[float] | None, request_id: str | None
    ) -> tuple[StreamSpec, list[float] | None]:
        """The model's output without learning, with the spec it ran with (``request_id``: keep the inputs
        for a later label)."""
        async with self._persistence.hold([stream_id]):
            # A read: it never creates a stream from a template (only observations do, with ingest rights).
            spec = (await self.require(stream_id, create=False)).spec
            model = spec.model
            if isinstance(model, ARModel | TrackModel):
                if x is not None:
                    raise InvalidInput(
                        f"{model.family} streams predict from their own history: send no 'x'", field="x"
                    )
                if request_id is not None:
                    raise InvalidInput(
                        f"{model.family} streams learn from the next value: post it as an observation",
                        field="request_id",
                    )
                inputs: list[np.ndarray | None] = [None]
            else:
                if x is None:
                    raise InvalidInput("missing 'x'", field="x", stream=stream_id)
                inputs = [check_vector(x, model.in_dim, "x", stream_id)]

            def run(engine: Engine) -> list[list[float] | None]:
                return engine.predict([stream_id], inputs)

            prediction = (await self._read(stream_id, run))[0]
        if request_id is not None and inputs[0] is not None:
            self._labels.put(stream_id, request_id, inputs[0])
        return spec, prediction

    async def label(
        self, stream_id: str, request_id: str, y: float | list[float]
    ) -> tuple[StreamSpec, ItemResult]:
        """Step on an earlier prediction's kept inputs; returns the spec it ran with and the result."""
        async with self._persistence.hold([stream_id]):
            record = await self.require(stream_id)
            x = self._labels.peek(stream_id, request_id)
            if x is None:
                raise UnknownRequest(
                    f"no pending prediction {request_id!r} for stream {stream_id!r} (never made, or expired)",
                    field="request_id",
                    stream=stream_id,
                )
            batch = build_batch(
                [ObservationIn(x=x.tolist(), y=y)],
                {stream_id: record.spec},
                default_stream=stream_id,
                prefix="label",
            )
            result = (await self._submit(batch)).items()[0]
        self._labels.discard(stream_id, request_id)
        return record.spec, result


_STREAM = attrgetter("stream")


def _named(items: Sequence[ObservationIn], default_stream: str | None = None) -> Iterator[str]:
    """The stream ids a request names (each as often as it does)."""
    if default_stream is not None:
        yield default_stream
    for item in items:
        if item.stream is not None:
            yield item.stream
