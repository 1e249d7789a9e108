"""service/scheduler.py in-process: natural batching, FIFO order, bounds, and stopping."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from trackin.models.engine import Engine, Outcomes
from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import IngestBatch, build_batch
from trackin.service.domain.scheduler import Scheduler
from trackin.service.errors import Unavailable, UnknownStream
from trackin.service.transport.wire import ObservationIn

pytestmark = pytest.mark.timeout(30)

SPEC = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})


def batch(stream: str, n: int, start: float = 0.0) -> IngestBatch:
    items = [ObservationIn(x=[start + i, 1.0], y=1.0) for i in range(n)]
    return build_batch(items, {stream: SPEC}, default_stream=stream)


class Recorder:
    """An after_apply hook: the request sizes of every engine call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, batches: list[IngestBatch], results: list[Outcomes], seconds: float) -> None:
        self.calls.append([len(b) for b in batches])


async def started(max_batch: int = 100) -> tuple[Scheduler, Engine, Recorder]:
    engine = Engine("cpu")
    for sid in ("a", "b"):
        engine.add(sid, SPEC)
    recorder = Recorder()
    scheduler = Scheduler(engine, max_batch=max_batch, after_apply=[recorder])
    scheduler.start()
    return scheduler, engine, recorder


async def hold_engine(scheduler: Scheduler) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Occupy the engine thread until the returned event is set (requests queue up meanwhile)."""
    release = threading.Event()
    entered = threading.Event()

    def block(engine: Engine) -> None:
        entered.set()
        release.wait(10)

    blocked = asyncio.ensure_future(scheduler.call(block))
    await asyncio.to_thread(entered.wait, 10)
    return release, blocked


async def test_a_lone_observation_waits_for_nobody() -> None:
    scheduler, _, recorder = await started()
    results = await asyncio.wait_for(scheduler.observe(batch("a", 1)), timeout=5)
    assert results.steps.tolist() == [1]
    assert recorder.calls == [[1]]
    await scheduler.stop()


async def test_what_queues_while_busy_becomes_one_batch_in_arrival_order() -> None:
    scheduler, _, recorder = await started()
    release, blocked = await hold_engine(scheduler)
    futures = [scheduler.submit(batch(sid, n, start=10 * i)) for i, (sid, n) in enumerate(
        [("a", 2), ("b", 3), ("a", 1), ("a", 4)]
    )]  # fmt: skip
    release.set()
    await blocked
    results = [await f for f in futures]
    assert recorder.calls == [[2, 3, 1, 4]]  # one engine call for all four requests
    assert results[0].steps.tolist() == [1, 2]
    assert results[1].steps.tolist() == [1, 2, 3]
    assert results[2].steps.tolist() == [3]  # after the first request's two, in arrival order
    assert results[3].steps.tolist() == [4, 5, 6, 7]
    await scheduler.stop()


async def test_batches_are_bounded_and_calls_keep_their_place() -> None:
    scheduler, engine, recorder = await started(max_batch=5)
    release, blocked = await hold_engine(scheduler)
    first = [
        scheduler.submit(batch("a", 2)),
        scheduler.submit(batch("a", 2)),
        scheduler.submit(batch("a", 2)),
    ]
    seen_steps = asyncio.ensure_future(
        scheduler.call(lambda e: int(e.locate("a").pool.state["opt/step"][e.locate("a").slot]))
    )
    await asyncio.sleep(0)  # let the call take its place in the queue
    second = scheduler.submit(batch("a", 1))
    release.set()
    await blocked
    await asyncio.gather(*first, second)
    # 2 + 2 fit in 5, the third waits for the next call; the control call runs between, in queue order.
    assert recorder.calls == [[2, 2], [2], [1]]
    assert await seen_steps == 6
    assert engine.locate("a").pool.state["opt/step"][engine.locate("a").slot].item() == 7
    await scheduler.stop()


async def test_a_stream_removed_or_replaced_meanwhile_fails_only_its_request() -> None:
    """Requests are checked against specs before they queue; a delete or replace queued ahead of them
    makes them fail (never apply to the new stream), while others in the same engine call apply."""
    scheduler, engine, recorder = await started()
    engine.add("c", SPEC)
    release, blocked = await hold_engine(scheduler)
    checked_b, checked_c = batch("b", 2), batch("c", 2)  # validated while b and c were as specified
    other = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}, "loss": "huber"})

    def replace_c(e: Engine) -> None:
        e.remove("c")
        e.add("c", other)

    changes = [
        asyncio.ensure_future(scheduler.call(lambda e: e.remove("b"))),
        asyncio.ensure_future(scheduler.call(replace_c)),
    ]
    await asyncio.sleep(0)  # both changes queued ahead of the requests checked before them
    doomed = [scheduler.submit(checked_b), scheduler.submit(checked_c)]
    kept = scheduler.submit(batch("a", 2))
    release.set()
    await blocked
    await asyncio.gather(*changes)
    for future, stream in zip(doomed, "bc", strict=True):
        with pytest.raises(UnknownStream) as error:
            await future
        assert error.value.stream == stream
    assert (await kept).steps.tolist() == [1, 2]
    assert recorder.calls == [[2]]
    assert engine.locate("c").pool.state["opt/step"][engine.locate("c").slot].item() == 0
    await scheduler.stop()


async def test_stop_finishes_what_was_accepted_then_refuses() -> None:
    scheduler, _, _ = await started()
    release, blocked = await hold_engine(scheduler)
    accepted = [scheduler.submit(batch("a", 3)) for _ in range(4)]
    stopping = asyncio.ensure_future(scheduler.stop())
    await asyncio.sleep(0)  # stop() runs up to its first await: the scheduler is closed from then on
    with pytest.raises(Unavailable):
        scheduler.submit(batch("a", 1))
    release.set()
    await blocked
    await stopping
    assert [r.step for f in accepted for r in f.result()] == list(range(1, 13))


async def test_pending_observations_are_the_backlog() -> None:
    """Accepted observations stay pending until applied or failed, and leave the count in the step that
    counts them (after_apply sees it lowered): accepted = pending + counted, whenever the loop looks."""
    scheduler, _, recorder = await started(max_batch=4)
    seen: list[int] = []
    scheduler.after_apply.append(lambda *_: seen.append(scheduler.pending_observations))
    release, blocked = await hold_engine(scheduler)
    doomed = batch("b", 2)  # checked while b exists; b is removed before it applies
    removal = asyncio.ensure_future(scheduler.call(lambda e: e.remove("b")))
    await asyncio.sleep(0)
    futures = [scheduler.submit(doomed), scheduler.submit(batch("a", 3)), scheduler.submit(batch("a", 2))]
    assert scheduler.pending_observations == 7
    release.set()
    await blocked
    await removal
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[0], UnknownStream)
    assert recorder.calls == [[3], [2]]  # 2 + 3 > 4: two engine calls
    assert seen == [2, 0]
    assert scheduler.pending_observations == 0
    await scheduler.stop()


async def test_reads_do_not_queue_and_see_every_acknowledged_step() -> None:
    scheduler, _, _ = await started()
    await scheduler.observe(batch("a", 2))  # acknowledged: a read after it sees both steps

    def steps(e: Engine) -> int:
        return e.figures("a").steps

    assert await scheduler.read(steps) == 2
    queued = scheduler.submit(batch("a", 3))  # queued, not applied: a read does not wait for it
    assert await asyncio.wait_for(scheduler.read(steps), timeout=5) == 2
    assert (await queued).steps.tolist() == [3, 4, 5]
    assert await scheduler.read(steps) == 5
    await scheduler.stop()


async def test_reads_wait_for_engine_work_on_the_thread() -> None:
    scheduler, _, _ = await started()
    release, blocked = await hold_engine(scheduler)
    read = asyncio.ensure_future(scheduler.read(lambda e: "read"))
    await asyncio.sleep(0.05)
    assert not read.done()  # the thread may be changing what it reads
    release.set()
    assert await asyncio.wait_for(read, timeout=5) == "read"
    await blocked
    await scheduler.stop()


async def test_reads_under_steady_ingestion_finish_and_see_every_acknowledged_step() -> None:
    """Batches are handed to the thread before it returns the previous one, so the thread is seldom idle:
    a read must not wait for an idle moment (it would wait for ever), and must still see every step
    acknowledged before it, and never one half applied."""
    scheduler, _, recorder = await started(max_batch=200)
    acknowledged = 0
    stop = asyncio.Event()

    async def ingest() -> None:
        nonlocal acknowledged
        in_flight: list[asyncio.Future[Outcomes]] = []
        while not stop.is_set():
            while len(in_flight) < 4:  # batches of 100 go to the thread (above the inline limit)
                in_flight.append(scheduler.submit(batch("a", 100)))
            done = await in_flight.pop(0)
            steps = done.steps.tolist()
            assert steps == list(range(steps[0], steps[0] + 100))  # one request's steps, in order
            acknowledged = steps[-1]
        for rest in in_flight:
            await rest

    producer = asyncio.ensure_future(ingest())
    try:
        for _ in range(20):
            before = acknowledged
            seen = await asyncio.wait_for(scheduler.read(lambda e: e.figures("a").steps), timeout=5)
            assert seen >= before
            assert seen % 100 == 0  # whole requests only: never read halfway through a batch
            await asyncio.sleep(0.002)
    finally:
        stop.set()
        await producer
    assert sum(len(c) for c in recorder.calls) > 20
    await scheduler.stop()


async def test_a_read_on_the_thread_holds_small_batches_off_the_loop() -> None:
    """A read that went to the busy engine thread may still run there when the thread's other work is done:
    a small batch queued then must not be applied on the loop meanwhile (it would change what the read is
    reading), but after it, on the thread."""
    scheduler, _, _ = await started()
    release, blocked = await hold_engine(scheduler)  # the thread is busy: the read queues behind it
    reading, finish = threading.Event(), threading.Event()

    def slow_read(engine: Engine) -> tuple[int, int]:
        first = engine.figures("a").steps
        reading.set()
        finish.wait(10)
        return first, engine.figures("a").steps

    read = asyncio.ensure_future(scheduler.read(slow_read))
    await asyncio.sleep(0.01)
    release.set()
    await blocked
    await asyncio.to_thread(reading.wait, 10)  # the read runs on the thread now
    small = scheduler.submit(batch("a", 2))  # inline-sized
    await asyncio.sleep(0.05)
    assert not small.done()  # not applied on the loop under the read
    finish.set()
    first, last = await asyncio.wait_for(read, timeout=5)
    assert first == last == 0
    assert (await asyncio.wait_for(small, timeout=5)).steps.tolist() == [1, 2]
    await scheduler.stop()


async def test_the_next_batch_goes_to_the_thread_while_the_last_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request arriving while the thread runs the only batch it has is handed over (checked, logged and
    queued on the thread) at once, not when that batch returns: a REST client sends its next request only
    after its answer, and waiting left the thread idle while that request was read and checked."""
    engine = Engine("cpu")
    for sid in ("a", "b"):
        engine.add(sid, SPEC)
    entered, release = threading.Event(), threading.Event()
    observe = engine.observe_arrays

    def held(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():  # the first engine call waits for the test
            entered.set()
            release.wait(10)
        return observe(*args, **kwargs)

    monkeypatch.setattr(engine, "observe_arrays", held)
    logged: list[list[int]] = []

    async def log(batches: list[IngestBatch]) -> None:
        logged.append([len(b) for b in batches])

    scheduler = Scheduler(engine, max_batch=100, inline_limit=0, before_apply=log)
    scheduler.start()
    first = scheduler.submit(batch("a", 3))
    assert await asyncio.to_thread(entered.wait, 10)
    second = scheduler.submit(batch("b", 2))
    for _ in range(200):
        if len(logged) == 2:
            break
        await asyncio.sleep(0.005)
    assert logged == [[3], [2]]  # the second was handed over while the first still ran
    assert not first.done()
    release.set()
    assert (await asyncio.wait_for(first, timeout=5)).steps.tolist() == [1, 2, 3]
    assert (await asyncio.wait_for(second, timeout=5)).steps.tolist() == [1, 2]
    await scheduler.stop()


async def test_a_batch_for_the_thread_finds_its_streams_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under batched load the engine thread is the bottleneck and the loop is not: a batch handed to the
    thread has its streams looked up on the loop, and the engine call takes those codes."""
    scheduler, engine, _ = await started(max_batch=1000)
    loop_thread = threading.get_ident()
    lookups: list[int] = []
    given: list[bool] = []
    codes, observe_arrays = engine.codes, engine.observe_arrays

    def recording_codes(ids: Any) -> Any:
        lookups.append(threading.get_ident())
        return codes(ids)

    def recording_observe(*args: Any, **kwargs: Any) -> Outcomes:
        given.append(len(args) >= 5 and args[4] is not None)
        return observe_arrays(*args, **kwargs)

    monkeypatch.setattr(engine, "codes", recording_codes)
    monkeypatch.setattr(engine, "observe_arrays", recording_observe)
    first, second = batch("a", 200), batch("b", 300)
    assert first.x is not None, "a columnar batch"
    results = await asyncio.gather(scheduler.observe(first), scheduler.observe(second))
    await scheduler.stop()
    assert [r.steps.tolist() for r in results] == [list(range(1, 201)), list(range(1, 301))]
    assert lookups, "the streams were looked up"
    assert set(lookups) == {loop_thread}, "on the event loop's thread, not the engine's"
    assert given, "the engine call took the codes looked up"
    assert all(given)
