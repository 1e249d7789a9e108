"""``Engine.observe_arrays`` (arrays in, ``Outcomes`` out) equals the per-item ``Engine.observe``: in float64,
exactly, over two pools of one width, repeated streams, and series streams with times."""

from __future__ import annotations

import numpy as np

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

LIN = {"model": {"family": "linear", "in_dim": 4, "init": "random", "seed": 1}, "dtype": "float64"}
SGD = {**LIN, "optimizer": {"name": "sgd", "lr": 0.05}}
AR = {"model": {"family": "ar", "dim": 2, "lags": 3, "target": "delta"}, "dtype": "float64"}


def _pair(specs: dict[str, dict[str, object]]) -> tuple[Engine, Engine]:
    engines = Engine("cpu"), Engine("cpu")
    for engine in engines:
        for sid, spec in specs.items():
            engine.add(sid, StreamSpec.model_validate(spec))
    return engines


def test_supervised_arrays_equal_items_across_pools_and_repeats() -> None:
    rng = np.random.default_rng(0)
    a, b = _pair({"p": LIN, "q": SGD, "r": LIN})
    for _ in range(5):
        ids = list(rng.choice(["p", "q", "r"], size=9))
        x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 1))
        got = a.observe_arrays(ids, x, y)
        want = b.observe(ids, list(x), list(y))
        assert got.steps.tolist() == [w.step for w in want]
        assert got.applied.tolist() == [w.applied for w in want]
        np.testing.assert_array_equal(got.predictions, np.array([w.prediction for w in want]))
        np.testing.assert_array_equal(got.losses, np.array([w.loss for w in want]))
        assert [item.step for item in got] == [w.step for w in want]  # item view, for callers that walk


def test_series_arrays_with_times_equal_items() -> None:
    rng = np.random.default_rng(1)
    a, b = _pair({"s": AR, "t": AR})
    clock = {"s": 0.0, "t": 0.0}
    for _ in range(6):
        ids = list(rng.choice(["s", "t"], size=4))
        times = []
        for sid in ids:
            clock[sid] += float(rng.integers(1, 3))
            times.append(clock[sid])
        values = rng.normal(size=(4, 2))
        got = a.observe_arrays(ids, values, None, np.array(times))
        want = b.observe(ids, list(values), [None] * 4, times)
        assert got.warming.tolist() == [w.warming for w in want]
        assert got.forecasts is not None
        expected = np.array([w.forecast if w.forecast is not None else [np.nan] * 2 for w in want])
        np.testing.assert_array_equal(got.forecasts, expected)


def test_spec_of_answers_what_locate_answers_and_none_for_a_stream_that_is_gone() -> None:
    engine = Engine("cpu")
    first = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    other = StreamSpec.model_validate({"model": {"family": "ar", "dim": 1, "lags": 2}})
    engine.add("a", first)
    engine.add("b", other)
    assert engine.spec_of("a") is engine.locate("a").spec
    assert engine.spec_of("b") is engine.locate("b").spec
    assert engine.spec_of("b") != engine.spec_of("a")
    engine.remove("a")
    assert engine.spec_of("a") is None
    assert engine.spec_of("never") is None
