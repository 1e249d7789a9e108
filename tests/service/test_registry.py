"""service/domain/registry.py in-process: the domain operations with a real Engine and Scheduler, no HTTP.

Everything is built by the app's own composition root (`trackin.service.app.build`): with no store
(``InMemory``) for the operations themselves, and on a SQLite store for what durability adds to them
(streams that are stored but not resident). The reference for every number is a separate Engine fed the
same observations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from trackin.models.engine import Engine, ItemResult
from trackin.models.specs import StreamSpec
from trackin.service.app import build
from trackin.service.domain.catalog import Template
from trackin.service.domain.registry import Registry
from trackin.service.errors import (
    InvalidInput,
    InvalidStreamId,
    SpecConflict,
    UnknownRequest,
    UnknownStream,
)
from trackin.service.settings import Settings
from trackin.service.state import AppState
from trackin.service.transport.wire import ObservationIn

pytestmark = pytest.mark.timeout(60)

LINEAR = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2, "init": "random", "seed": 3}})
OTHER = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}})
AR = StreamSpec.model_validate({"model": {"family": "ar", "dim": 1, "lags": 2}})
XY = [([0.5, -1.0], 0.25), ([1.5, 0.5], -0.5), ([0.0, 2.0], 1.0)]


@pytest.fixture
async def state() -> AsyncIterator[AppState]:
    built = build(Settings(store="memory"))
    built.scheduler.start()
    yield built
    await built.scheduler.stop()


@pytest.fixture
def registry(state: AppState) -> Registry:
    return state.registry


def _items(rows: Sequence[tuple[list[float], float]], stream: str | None = None) -> list[ObservationIn]:
    return [ObservationIn(stream=stream, x=x, y=y) for x, y in rows]


async def _observe(
    registry: Registry, stream_id: str, rows: Sequence[tuple[list[float], float]]
) -> list[ItemResult]:
    _, applied = await registry.enqueue(_items(rows), default_stream=stream_id, prefix="observations")
    return (await applied).items()


def _reference(rows: Sequence[tuple[list[float], float]], spec: StreamSpec = LINEAR) -> Engine:
    engine = Engine("cpu")
    engine.add("ref", spec)
    for x, y in rows:
        engine.observe(["ref"], [np.asarray(x, dtype=np.float64)], [np.asarray([y], dtype=np.float64)])
    return engine


# ----- streams ---------------------------------------------------------------------------------------------


async def test_put_creates_keeps_refuses_and_replaces(registry: Registry) -> None:
    assert await registry.put_stream("s", LINEAR) == "created"
    assert await registry.put_stream("s", LINEAR) == "unchanged"
    with pytest.raises(SpecConflict) as conflict:
        await registry.put_stream("s", OTHER)
    assert (conflict.value.status, conflict.value.field, conflict.value.stream) == (409, "spec", "s")
    await _observe(registry, "s", XY)
    assert await registry.put_stream("s", OTHER, replace=True) == "replaced"
    described = await registry.describe("s")
    assert described["spec"] == OTHER.model_dump(mode="json")
    assert described["figures"]["steps"] == 0


async def test_ids_are_checked_before_anything_happens(registry: Registry, state: AppState) -> None:
    with pytest.raises(InvalidStreamId) as caught:
        await registry.put_stream("no spaces", LINEAR)
    assert (caught.value.status, caught.value.field) == (422, "stream_id")
    assert len(state.engine) == 0


async def test_describe_reports_the_engine_figures_and_never_creates(registry: Registry) -> None:
    await registry.put_stream("s", LINEAR)
    results = await _observe(registry, "s", XY)
    reference = _reference(XY)
    want = reference.observe(["ref"], [np.asarray([1.0, 1.0])], [np.asarray([0.0])])[0]
    got = (await _observe(registry, "s", [([1.0, 1.0], 0.0)]))[0]
    assert [r.step for r in results] == [1, 2, 3]
    assert (got.step, got.applied) == (want.step, want.applied)
    assert got.loss == pytest.approx(want.loss, rel=1e-6)
    described = await registry.describe("s")
    assert described["stream"] == "s"
    assert described["figures"]["steps"] == 4
    assert described["figures"]["last_loss"] == pytest.approx(want.loss, rel=1e-6)
    assert described["template"] is None
    await registry.put_template(Template("t", "auto-", LINEAR, 60.0))
    with pytest.raises(UnknownStream) as unknown:
        await registry.describe("auto-1")
    assert (unknown.value.status, unknown.value.stream) == (404, "auto-1")


async def test_delete_removes_the_stream_and_its_pending_labels(registry: Registry, state: AppState) -> None:
    await registry.put_stream("s", LINEAR)
    await registry.predict("s", [1.0, 2.0], "r1")
    await registry.delete_stream("s")
    assert "s" not in state.engine
    with pytest.raises(UnknownStream):
        await registry.describe("s")
    await registry.put_stream("s", LINEAR)
    with pytest.raises(UnknownRequest):
        await registry.label("s", "r1", 1.0)
    await registry.delete_stream("s")
    with pytest.raises(UnknownStream):
        await registry.delete_stream("s")


async def test_list_pages_through_sorted_ids(registry: Registry) -> None:
    for stream_id in ("b", "a", "c", "x-1"):
        await registry.put_stream(stream_id, LINEAR)
    assert await registry.list_streams("", 2, None) == (["a", "b"], "b")
    assert await registry.list_streams("", 2, "b") == (["c", "x-1"], None)
    assert await registry.list_streams("x-", 10, None) == (["x-1"], None)


# ----- templates -------------------------------------------------------------------------------------------


async def test_templates_create_streams_by_the_longest_prefix_and_idle_ones_are_swept(
    registry: Registry, state: AppState
) -> None:
    short, long = Template("short", "cam", OTHER, 60.0), Template("long", "cam1:", LINEAR, 0.05)
    assert await registry.put_template(short) == "created"
    assert await registry.put_template(long) == "created"
    assert await registry.put_template(long) == "unchanged"
    assert [t.name for t in registry.templates()] == ["short", "long"]
    results = await _observe(registry, "cam1:a", XY[:1])
    assert results[0].step == 1
    assert (await registry.describe("cam1:a"))["template"] == "long"
    assert (await registry.describe("cam1:a"))["spec"] == LINEAR.model_dump(mode="json")

    await asyncio.sleep(0.1)
    assert await registry.sweep_idle() == ["cam1:a"]
    assert "cam1:a" not in state.engine

    await registry.delete_template("long")
    with pytest.raises(UnknownStream) as caught:
        await registry.delete_template("long")
    assert caught.value.field == "name"


# ----- observations, predictions, labels -------------------------------------------------------------------


async def test_a_batch_is_checked_whole_before_anything_is_applied(registry: Registry) -> None:
    await registry.put_stream("a", LINEAR)
    await registry.put_stream("b", LINEAR)
    bad = [ObservationIn(stream="a", x=[1.0, 2.0], y=0.5), ObservationIn(stream="b", x=[1.0], y=0.5)]
    with pytest.raises(InvalidInput) as caught:
        await registry.enqueue(bad, default_stream=None, prefix="observations")
    assert (caught.value.field, caught.value.stream) == ("observations[1].x", "b")
    with pytest.raises(UnknownStream) as unknown:
        await registry.enqueue(_items(XY, stream="nobody"), default_stream=None, prefix="observations")
    assert unknown.value.stream == "nobody"
    assert (await registry.describe("a"))["figures"]["steps"] == 0

    good = [*_items(XY[:2], stream="a"), *_items(XY[:1], stream="b"), *_items(XY[2:], stream="a")]
    batch, applied = await registry.enqueue(good, default_stream=None, prefix="observations", transport="ws")
    assert (batch.stream_ids, batch.transport) == (["a", "a", "b", "a"], "ws")
    assert [r.step for r in await applied] == [1, 2, 1, 3]
    reference = _reference(XY)
    predictions = (await registry.predict("a", [0.5, 0.5], None))[1]
    np.testing.assert_allclose(
        predictions, reference.predict(["ref"], [np.asarray([0.5, 0.5])])[0], rtol=2e-5, atol=1e-6
    )


async def test_a_label_applies_the_step_for_a_kept_prediction_once(registry: Registry) -> None:
    await registry.put_stream("s", LINEAR)
    spec, values = await registry.predict("s", [1.0, -1.0], "req-1")
    assert spec == LINEAR
    assert values is not None
    assert len(values) == 1
    spec, result = await registry.label("s", "req-1", 0.5)
    assert (spec, result.step, result.applied) == (LINEAR, 1, True)
    assert result.prediction == values, "the answer is the prediction made before learning"
    with pytest.raises(UnknownRequest) as caught:
        await registry.label("s", "req-1", 0.5)
    assert (caught.value.status, caught.value.field, caught.value.stream) == (404, "request_id", "s")


async def test_ar_streams_predict_from_their_own_history(registry: Registry) -> None:
    await registry.put_stream("series", AR)
    with pytest.raises(InvalidInput) as caught:
        await registry.predict("series", [1.0], None)
    assert caught.value.field == "x"
    assert await registry.predict("series", None, None) == (AR, None), "warming: nothing to forecast yet"


# ----- with a store ----------------------------------------------------------------------------------------


async def test_stored_streams_are_listed_described_and_deleted_when_not_resident(tmp_path: Path) -> None:
    settings = Settings(store="sqlite", data_dir=tmp_path, max_resident_streams=1)
    state = build(settings)
    assert state.durability is not None
    state.scheduler.start()
    await state.durability.start()
    registry = state.registry
    try:
        for stream_id in ("a", "b", "c"):
            await registry.put_stream(stream_id, LINEAR)
            await _observe(registry, stream_id, XY[:1])
        deadline = asyncio.get_running_loop().time() + 10
        while len(state.engine) > 1:  # the checkpoint loop evicts down to the limit
            assert asyncio.get_running_loop().time() < deadline, "eviction"
            await asyncio.sleep(0.05)
        assert await registry.list_streams("", 10, None) == (["a", "b", "c"], None)
        assert (await registry.describe("a"))["figures"]["steps"] == 1, "restored to answer"
        await registry.delete_stream("b")
        assert await registry.list_streams("", 10, None) == (["a", "c"], None)
        with pytest.raises(UnknownStream):
            await registry.describe("b")
        assert state.durability.known_streams() == 2
    finally:
        await state.scheduler.drain()
        await state.durability.stop()
        await state.scheduler.stop()


async def test_a_read_queued_behind_the_removal_answers_unknown_stream(registry: Registry) -> None:
    """A describe or predict that found the stream, but whose engine call may run after its removal, is
    told the stream is unknown (404), not an engine error (500)."""
    await registry.put_stream("s", LINEAR)
    await registry.put_stream("r", AR)
    deleting = asyncio.create_task(registry.delete_stream("s"))
    reads = [
        asyncio.create_task(registry.describe("s")),
        asyncio.create_task(registry.predict("s", [1.0, 2.0], None)),
    ]
    deleting_r = asyncio.create_task(registry.delete_stream("r"))
    reads.append(asyncio.create_task(registry.predict("r", None, None)))
    await asyncio.gather(deleting, deleting_r)
    # Reads do not queue behind control calls: each ran before the removal (an answer) or after it (404),
    # never into an engine error (a 500).
    for outcome in await asyncio.gather(*reads, return_exceptions=True):
        assert not isinstance(outcome, BaseException) or isinstance(outcome, UnknownStream), outcome


TRACK = StreamSpec.model_validate({"model": {"family": "track", "dim": 1}})


async def _values(
    registry: Registry, stream_id: str, values: Sequence[tuple[float, float | None]]
) -> list[ItemResult]:
    items = [ObservationIn(value=[v], ts=ts) for v, ts in values]
    _, applied = await registry.enqueue(items, default_stream=stream_id, prefix="observations")
    return await applied


@pytest.mark.parametrize("known", [True, False], ids=["created", "restored"])
async def test_a_series_time_not_after_the_last_is_refused_before_anything_applies(
    registry: Registry, state: AppState, known: bool
) -> None:
    """A timed series (track, ar on the scale-free path) refuses a ``ts`` that is not after the last one its
    earlier requests left: 422 naming ``observations[i].ts`` and the rule, nothing applied (before, the
    engine answered ``applied: false``). Also for a stream whose time is read from the engine (restored)."""
    await registry.put_stream("t", TRACK)
    await _values(registry, "t", [(1.0, 1.0), (2.0, 2.0), (3.0, None)])  # no ts: one after the last (3)
    if not known:
        record = registry._catalog.record("t")
        assert record is not None
        record.series_time = None  # as a stream restored from the store starts
    before = await state.scheduler.call(lambda engine: engine.export("t"))
    for values, where in (([(9.0, 3.0)], 0), ([(4.0, 4.0), (5.0, 3.5)], 1), ([(4.0, 4.0), (5.0, 2.0)], 1)):
        with pytest.raises(InvalidInput, match="ts must") as refused:
            await _values(registry, "t", values)
        assert refused.value.field == f"observations[{where}].ts"
        assert refused.value.status == 422
    after = await state.scheduler.call(lambda engine: engine.export("t"))
    for key, value in before.items():
        assert torch.equal(value.nan_to_num(), after[key].nan_to_num()), key
    (result,) = await _values(registry, "t", [(4.0, 4.0)])
    assert result.applied
    assert result.prediction == pytest.approx([4.0])  # constant velocity across the refused requests


async def test_untimed_series_keep_no_time(registry: Registry, state: AppState) -> None:
    """First-order series ignore ``ts`` (beyond increasing within a request): nothing to refuse."""
    await registry.put_stream(
        "a", AR.model_copy(update={"optimizer": AR.optimizer.model_copy(update={"precondition": "none"})})
    )
    record = registry._catalog.record("a")
    assert record is not None
    assert record.series_time is None
    await _values(registry, "a", [(1.0, 5.0)])
    await _values(registry, "a", [(1.0, 1.0)])


async def test_a_read_racing_a_removal_is_an_unknown_stream(registry: Registry, state: AppState) -> None:
    """describe skips the queue but waits for engine work on the thread; if that work removed the stream
    after describe found its record, the answer is 404 (unknown), not a 500."""
    await registry.put_stream("r", LINEAR)
    gate, entered = threading.Event(), threading.Event()

    def remove_slowly(engine: Engine) -> None:
        entered.set()
        gate.wait(10)
        engine.remove("r")

    removing = asyncio.ensure_future(state.scheduler.call(remove_slowly))
    await asyncio.to_thread(entered.wait, 10)
    describing = asyncio.ensure_future(registry.describe("r"))  # its record is still in the catalog
    await asyncio.sleep(0.05)
    gate.set()
    with pytest.raises(UnknownStream):
        await describing
    await removing
