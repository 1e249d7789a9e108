"""service/domain/series_times.py: the host's copy of each timed series' last time refuses exactly what the
engine would (in the stream's dtype), vectorised or item by item alike."""

from __future__ import annotations

import numpy as np
import pytest

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain import series_times
from trackin.service.domain.ingest import build_batch
from trackin.service.errors import InvalidInput
from trackin.service.transport.wire import ObservationIn


def _spec(dtype: str) -> StreamSpec:
    return StreamSpec.model_validate({"model": {"family": "track", "dim": 1}, "dtype": dtype})


def _advance(
    batch: object, times: dict[str, series_times.SeriesTime]
) -> tuple[dict[str, series_times.SeriesTime], str | None]:
    """The moved times, or the field of the refused item."""
    try:
        return series_times.advance(batch, times, "observations"), None  # type: ignore[arg-type]
    except InvalidInput as refused:
        return {}, refused.field


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_vectorised_path_equals_the_item_path_and_the_engine(dtype: str) -> None:
    rng = np.random.default_rng(0)
    spec = _spec(dtype)
    ids = [f"s{k}" for k in range(6)]
    engine = Engine()
    times = {}
    for stream_id in ids:
        engine.add(stream_id, spec)
        times[stream_id] = series_times.UNSEEN
    for _ in range(30):
        ts = [None if rng.random() < 0.3 else float(t) for t in rng.integers(0, 40, size=len(ids)) + 0.1]
        items = [ObservationIn(stream=s, value=[1.0], ts=t) for s, t in zip(ids, ts, strict=True)]
        batch = build_batch(items, {s: spec for s in ids})
        results = engine.observe(ids, [np.ones(1)] * len(ids), [None] * len(ids), ts)
        moved, field = _advance(batch, times)
        if field is not None:
            bad = int(field.split("[")[1].split("]")[0])
            assert results[bad].nonfinite, "refused here, refused by the engine"
            # the engine took the others: follow it from its state
            times = {s: series_times.from_state(engine.export(s)) for s in ids}
            continue
        assert moved == series_times._advance_items(batch, times, "observations")
        assert not any(r.nonfinite for r in results)
        times.update(moved)
        assert times == {s: series_times.from_state(engine.export(s)) for s in ids}


def test_float32_times_round_like_the_engine() -> None:
    """Unix seconds in a float32 stream keep 24 bits (128 s at 1.7e9): the message says so."""
    spec = _spec("float32")
    batch = build_batch([ObservationIn(stream="s", value=[1.0], ts=1.7e9 + 1)], {"s": spec})
    with pytest.raises(InvalidInput, match="in the stream's float32") as refused:
        series_times.advance(batch, {"s": (True, float(np.float32(1.7e9)))}, "observations")
    assert refused.value.field == "observations[0].ts"
