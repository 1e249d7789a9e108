"""One worker owns the engine; handlers hand it work and await the result.

Natural batching: whatever queued up while the previous batch ran becomes the next batch (up to a bound), so
a lone observation waits for nobody and a busy server takes big batches. The queue is FIFO, so per stream the
steps happen in the order requests arrived, whichever REST request or WebSocket connection they came from.
Control-plane calls (create, delete, restore, export) go through the same queue, ordered with observations.

Where engine work runs: a batch of up to ``inline_limit`` observations runs on the event loop itself. Its
engine call costs about as much as the thread hand-off it would need (submit, wake the thread, chain the
future back: tens of microseconds and two context switches), and the loop parses the next requests while
the previous answers are written anyway. Bigger batches and control-plane calls (exports, restores: possibly
long) run on one dedicated thread, so the loop keeps parsing requests meanwhile. Either way engine work
stays strictly in queue order. The loop and the thread form a pipeline: while the thread applies batch N,
the loop checks (and logs) batch N+1 and hands it to the thread at once, queued behind N, so the thread
starts it the moment N returns instead of waiting for the loop to come round (the loop may be decoding a
frame of a thousand rows then: the thread sat idle a quarter of the time under pipelined MessagePack
batches, docs/engine.md, "The engine thread's next batch, queued ahead"). When batch N returns, its
requests are settled in the loop's next step. What the thread's call needs and the loop can prepare (the
merged columns, the streams' codes) is prepared on the loop as the batch is handed over: under batched
load the thread is the bottleneck (docs/engine.md, "Ninth session"). With nothing queued, the loop waits
for the thread's batch or a new arrival, whichever comes first: a REST client sends its next request only
after its answer, and that request must reach the thread while the other connection's batch still runs
(docs/engine.md, "Eighth session").

Reads (`read`: figures, predictions) do not queue behind observations: they see every step acknowledged
before them (an acknowledged step has been applied). They run on the loop when the thread is idle, and
otherwise on the thread right after the (at most two) batches already handed to it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from trackin.models.engine import Engine, ItemResult, Outcomes, UnknownStreamError
from trackin.service.domain.ingest import IngestBatch
from trackin.service.errors import Unavailable, UnknownStream

__all__ = ["AfterApply", "BatchHook", "Parts", "Scheduler"]

T = TypeVar("T")

_AHEAD = 2
"""Observation batches handed to the engine thread at once: the one it runs and the next, queued."""

AfterApply = Callable[[list[IngestBatch], Any, float], None]
"""Called in the worker right after each engine call, before any later job runs (counting, metrics); the
second argument is the list of each batch's `Outcomes` (a `Parts`, with all of them ``merged``)."""

BatchHook = Callable[[list[IngestBatch]], Awaitable[None]]
"""Awaited before a batch is applied (e.g. the durability log); raising fails the batch, applying nothing."""


@dataclass(slots=True)
class _Observe:
    batch: IngestBatch
    future: asyncio.Future[Outcomes]


@dataclass(slots=True)
class _Call:
    fn: Callable[[Engine], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Applying:
    """An observation batch's engine call, running on the engine thread."""

    live: list[_Observe]
    batches: list[IngestBatch]
    started: float
    engine: asyncio.Future[Parts]


class Scheduler:
    """Serialises all engine access; batches consecutive observation requests."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int,
        inline_limit: int = 64,
        before_apply: BatchHook | None = None,
        after_apply: Sequence[AfterApply] = (),
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.inline_limit = inline_limit
        self.before_apply = before_apply
        self.after_apply = list(after_apply)
        self._queue: collections.deque[_Observe | _Call] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackin-engine")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_batch_size = 0
        self._pending_observations = 0
        self._threaded: asyncio.Future[Any] | None = None  # the last work handed to the engine thread

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def pending_observations(self) -> int:
        """Observations accepted and not yet applied or failed: queued, or in the engine now.

        It drops in the same step in which ``after_apply`` counts them, so, read from the event loop,
        accepted = pending + counted at every moment.
        """
        return self._pending_observations

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trackin-scheduler")

    async def drain(self) -> None:
        """Wait until everything queued so far has been applied (new work is still accepted)."""
        await self.call(lambda engine: None)

    async def stop(self) -> None:
        """Finish everything already accepted, then stop the worker."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def submit(self, batch: IngestBatch) -> asyncio.Future[Outcomes]:
        """Queue a validated batch now (its place in the order is fixed here); the future gets its results."""
        future: asyncio.Future[Outcomes] = asyncio.get_running_loop().create_future()
        self._submit(_Observe(batch, future))
        return future

    async def observe(self, batch: IngestBatch) -> Outcomes:
        """Apply a validated batch (one step per observation) and return its outcomes in order."""
        return await self.submit(batch)

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the engine thread, in queue order with observations."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(_Call(fn, future))
        return await future

    async def read(self, fn: Callable[[Engine], T]) -> T:
        """Run a read-only ``fn(engine)`` without queueing behind observations: it sees every batch applied
        so far (so every step acknowledged before it). On the event loop, now, when the engine thread is
        idle; otherwise on the thread, right after the batches already handed to it (at most ``_AHEAD``),
        which may be mutating the state ``fn`` reads. (Waiting on the loop for a quiet thread could wait
        for ever under steady ingestion: the thread is handed its next batch before it returns one.)"""
        if self._thread_idle():
            return fn(self.engine)
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, self.engine)
        self._threaded = future  # nothing runs inline on the loop until it is done (``_thread_idle``)
        return await future

    def _thread_idle(self) -> bool:
        """Nothing runs on the engine thread or waits for it (in its queue, work runs in order)."""
        busy = self._threaded
        return busy is None or busy.done()

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the engine thread; reads meanwhile go to the thread, after it (``read``)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._threaded = future
        return await future

    def _submit(self, job: _Observe | _Call) -> None:
        if self._closing:
            raise Unavailable("the server is shutting down", retry_after=5)
        self._queue.append(job)
        if isinstance(job, _Observe):
            self._pending_observations += len(job.batch)
        self._wake.set()

    def _settled(self, jobs: Sequence[_Observe]) -> None:
        self._pending_observations -= sum(len(j.batch) for j in jobs)

    async def _run(self) -> None:
        # The engine stages of earlier observation batches, oldest first, on the thread or queued for it
        # (at most ``_AHEAD``). The thread takes them in order, so when it returns one the next is already
        # waiting for it, instead of waiting for the loop to come round (the loop may be a frame's decode
        # away). The next batch's ``before_apply`` (a durability-log append: a store round trip) overlaps
        # them too. Engine work stays strictly in queue order, and a control-plane call waits for all of
        # it, so a call sees every batch queued before it applied and none after it logged. A batch's
        # requests are settled as soon as it returns.
        applying: collections.deque[_Applying] = collections.deque()
        try:
            while True:
                if not self._queue:
                    if applying:
                        await self._finish_or_arrival(applying)
                        continue
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    await self._linger()
                    continue
                if len(applying) >= _AHEAD:  # the thread has its next batch: this one gathers meanwhile
                    await self._finish(applying.popleft())
                    continue
                job = self._queue.popleft()
                if isinstance(job, _Call):
                    while applying:
                        await self._finish(applying.popleft())
                    try:
                        job.future.set_result(await self._on_thread(job.fn, self.engine))
                    except BaseException as exc:
                        if not job.future.done():
                            job.future.set_exception(exc)
                        if isinstance(exc, asyncio.CancelledError):
                            raise  # the worker itself is cancelled: end, do not swallow it
                    continue
                jobs = [job]
                size = len(job.batch)
                while self._queue and isinstance(self._queue[0], _Observe):
                    nxt = self._queue[0]
                    assert isinstance(nxt, _Observe)
                    if size + len(nxt.batch) > self.max_batch:
                        break
                    jobs.append(nxt)
                    size += len(nxt.batch)
                    self._queue.popleft()
                live = self._valid(jobs)
                if live and self.before_apply is not None:
                    live = await self._logged(live, applying)
                if not live:
                    continue
                if self._thread_idle() and sum(len(j.batch) for j in live) <= self.inline_limit:
                    self._apply_inline(live)
                else:  # after the batches (and reads) on the thread, in order: never inline past them
                    applying.append(self._start(live))
        finally:
            for unsettled in applying:  # the worker is cancelled with batches unsettled: their requests end
                self._settled(unsettled.live)
                for j in unsettled.live:
                    j.future.cancel()

    async def _finish_or_arrival(self, applying: collections.deque[_Applying]) -> None:
        """Nothing queued, batches on the thread: settle the oldest when it returns, or, while the thread
        has room for its next batch, stop at the first new arrival so it is handed over at once. (A REST
        client with a request or two in flight sends its next only after its answer: waiting for the
        thread's last batch instead left the thread idle while that request was read and checked.)"""
        head = applying[0].engine
        if len(applying) < _AHEAD and not head.done():
            self._wake.clear()
            arrival = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((head, arrival), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
            if not head.done():
                await self._linger()
                return
        await self._finish(applying.popleft())

    async def _logged(self, live: list[_Observe], applying: collections.deque[_Applying]) -> list[_Observe]:
        """`_prepare` (``before_apply``: a store round trip) while the batches on the thread run; each one
        that returns meanwhile is settled at once, not after the append."""
        prepared = asyncio.ensure_future(self._prepare(live))
        try:
            while applying and not prepared.done():
                head = applying[0].engine
                either: list[asyncio.Future[Any]] = [prepared, head]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if head.done():
                    await self._finish(applying.popleft())
            return await prepared
        finally:
            prepared.cancel()  # a no-op once done; if the worker is cancelled meanwhile, with it

    async def _linger(self) -> None:
        """Woken by new work: first let work already on its way join the batch. Ready tasks (a WebSocket
        reader with more frames buffered, handlers of requests parsed in the same read) queue theirs within
        a few loop iterations each. Stop after four iterations that added nothing, or once a batch worth a
        thread is queued: a lone request waits four idle iterations (microseconds), and a pipelining client
        gets batches instead of one engine round per message."""
        quiet = 0
        while quiet < 4 and self._pending_observations < self.inline_limit:
            before = self._pending_observations
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._pending_observations == before else 0

    def _valid(self, jobs: list[_Observe]) -> list[_Observe]:
        """The jobs still valid; the others' futures get the error."""
        live: list[_Observe] = []
        failed: list[_Observe] = []
        for j in jobs:
            (live if self._still_valid(j) else failed).append(j)
        self._settled(failed)
        return live

    async def _prepare(self, live: list[_Observe]) -> list[_Observe]:
        """The valid jobs whose ``before_apply`` succeeded; the others' futures get the error."""
        if not live or self.before_apply is None:
            return live
        try:
            await self.before_apply([j.batch for j in live])
        except BaseException as exc:
            self._settled(live)
            _fail(live, exc)
            return []
        return live

    def _apply_inline(self, live: list[_Observe]) -> None:
        """A small batch, applied on the event loop (no await: nothing runs in between)."""
        batches = [j.batch for j in live]
        started = time.perf_counter()
        try:
            results = _observe_all(self.engine, batches)
        except Exception as exc:
            self._settled(live)
            _fail(live, exc)
            return
        self._done(live, batches, results, started)

    def _start(self, live: list[_Observe]) -> _Applying:
        """Hand the batch to the engine thread now; `_finish` collects it."""
        batches = [j.batch for j in live]
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        columns = _columns(self.engine, batches)  # here: the thread's time is the scarce one (see there)
        engine = loop.run_in_executor(self._executor, _observe_all, self.engine, batches, columns)
        self._threaded = engine  # reads wait for it (``read``)
        return _Applying(live, batches, started, engine)

    async def _finish(self, applying: _Applying) -> None:
        """Wait for the batch's engine call, then settle its requests (the next batch is already on the
        thread, or the caller hands it over in the same step, before any handler answers)."""
        try:
            results = await applying.engine
        except Exception as exc:
            self._settled(applying.live)
            _fail(applying.live, exc)
            return
        self._done(applying.live, applying.batches, results, applying.started)

    def _done(
        self,
        live: list[_Observe],
        batches: list[IngestBatch],
        results: list[Outcomes],
        started: float,
    ) -> None:
        self.last_batch_size = sum(len(b) for b in batches)
        seconds = time.perf_counter() - started
        self._settled(live)  # no await until the hooks have counted them
        for hook in self.after_apply:
            hook(batches, results, seconds)
        for j, result in zip(live, results, strict=True):
            if not j.future.done():
                j.future.set_result(result)

    def _still_valid(self, job: _Observe) -> bool:
        """A stream deleted or replaced after the request was checked makes the request fail, not misapply."""
        spec_of = self.engine.spec_of
        for stream, spec in job.batch.specs.items():
            current = spec_of(stream)
            if current is not spec and current != spec:
                job.future.set_exception(
                    UnknownStream(f"stream {stream!r} was removed or replaced meanwhile", stream=stream)
                )
                return False
        return True


@dataclass(slots=True)
class _Columns:
    """Columnar batches of one shape, merged: `Engine.observe_arrays`'s arguments."""

    ids: Sequence[str]
    x: np.ndarray
    y: np.ndarray | None
    t: np.ndarray | None
    codes: np.ndarray | None


def _columns(engine: Engine, batches: list[IngestBatch]) -> _Columns | None:
    """The batches merged for one ``observe_arrays`` call, with their streams' codes looked up, or None
    if they are not all columnar of one shape. The scheduler calls this on the event loop as it hands the
    batches to the engine thread: under batched load that thread is the bottleneck and the loop is not
    (docs/engine.md, "Ninth session"), and the codes hold until the next control-plane call, which waits
    for these batches. An unknown stream leaves the lookup to the engine call, which refuses it."""
    first = batches[0]
    if first.x is None or not all(_same_shape(first, b) for b in batches):
        return None
    x = first.x if len(batches) == 1 else np.concatenate([b.x for b in batches])  # type: ignore[misc]
    y = None
    if first.y is not None:
        y = first.y if len(batches) == 1 else np.concatenate([b.y for b in batches])  # type: ignore[misc]
    t = None
    if any(b.t is not None for b in batches):
        t = np.concatenate([b.t if b.t is not None else np.full(len(b), np.nan) for b in batches])
    ids = first.stream_ids if len(batches) == 1 else [s for b in batches for s in b.stream_ids]
    try:
        codes = engine.codes(ids)
    except UnknownStreamError:
        codes = None
    return _Columns(ids, x, y, t, codes)


def _observe_all(engine: Engine, batches: list[IngestBatch], columns: _Columns | None = None) -> Parts:
    """One engine call for the merged batches; outcomes split back per request.

    Columnar batches of one shape (the common case) are concatenated and go through
    ``Engine.observe_arrays`` (``columns``: merged already, `_columns`); anything else through the
    per-item ``Engine.observe``."""
    if columns is None:
        columns = _columns(engine, batches)
    if columns is not None:
        merged = engine.observe_arrays(columns.ids, columns.x, columns.y, columns.t, columns.codes)
    else:
        ids = []
        inputs: list[np.ndarray] = []
        targets: list[np.ndarray | None] = []
        timed = any(b.times is not None for b in batches)
        times: list[float | None] = []
        for b in batches:
            ids.extend(b.stream_ids)
            inputs.extend(b.inputs)
            targets.extend(b.targets)
            if timed:
                times.extend(b.times if b.times is not None else [None] * len(b))
        merged = _from_items(engine.observe(ids, inputs, targets, times if timed else None))
    out, start = Parts(merged), 0
    for b in batches:
        out.append(merged.take(start, start + len(b)))
        start += len(b)
    return out


class Parts(list[Outcomes]):
    """Each batch's outcomes (views), and ``merged``: all of them, for hooks that sum over the call."""

    def __init__(self, merged: Outcomes) -> None:
        super().__init__()
        self.merged = merged


def _same_shape(a: IngestBatch, b: IngestBatch) -> bool:
    if b.x is None or a.x is None or b.x.shape[1] != a.x.shape[1]:
        return False
    if a.y is None or b.y is None:
        return a.y is None and b.y is None
    return bool(a.y.shape[1] == b.y.shape[1])


def _from_items(items: list[ItemResult]) -> Outcomes:
    """Per-item results as columns; predictions and forecasts padded with NaN to the widest item."""
    n = len(items)
    rows = [r.prediction for r in items if r.prediction is not None]
    rows += [r.forecast for r in items if r.forecast is not None]
    width = max((len(row) for row in rows), default=1)
    series = any(r.forecast is not None or r.warming for r in items)
    out = Outcomes.empty(n, width, np.dtype(np.float64), series)
    for i, r in enumerate(items):
        out.steps[i] = r.step
        if r.prediction is not None:
            out.predictions[i, : len(r.prediction)] = r.prediction
        if r.forecast is not None and out.forecasts is not None:
            out.forecasts[i, : len(r.forecast)] = r.forecast
        out.losses[i] = np.nan if r.loss is None else r.loss
        out.applied[i], out.warming[i], out.nonfinite[i], out.drift[i] = (
            r.applied, r.warming, r.nonfinite, r.drift
        )  # fmt: skip
    return out


def _fail(jobs: list[_Observe], exc: BaseException) -> None:
    """Every job's future gets the error; a cancellation also goes on up (the worker is stopping)."""
    for j in jobs:
        if not j.future.done():
            j.future.set_exception(exc)
    if isinstance(exc, asyncio.CancelledError):
        raise exc
