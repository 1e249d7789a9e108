"""The first-order path learns scale-free (models/standardize.py): the same data at any scale and offset give
the same relative predictions, and pathological series never diverge, for ``mlp``, ``ar`` with hidden layers
and the first-order ``linear`` and ``ar`` (``precondition: none``); series serve the naive mix
(models/naive_mix.py), so they are never materially worse than no change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.models.test_tracking import PATHOLOGICAL
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

SERIES: dict[str, dict[str, Any]] = {
    "ar-hidden": {"model": {"family": "ar", "dim": 1, "hidden": [8]}},
    "ar-hidden-level-adam": {
        "model": {"family": "ar", "dim": 1, "lags": 3, "hidden": [6], "target": "level"},
        "optimizer": {"name": "adam"},
    },
    "ar-first-order": {"model": {"family": "ar", "dim": 1}, "optimizer": {"precondition": "none"}},
    "ar-sgd-huber": {"model": {"family": "ar", "dim": 1}, "loss": "huber", "optimizer": {"name": "sgd"}},
}
REGRESSION: dict[str, dict[str, Any]] = {
    "mlp": {"model": {"family": "mlp", "in_dim": 2}},
    "mlp-relu-huber-sgd": {
        "model": {"family": "mlp", "in_dim": 2, "activation": "relu"},
        "loss": "huber",
        "optimizer": {"name": "sgd", "momentum": 0.9, "lr": 0.005},
    },
    "linear-first-order": {"model": {"family": "linear", "in_dim": 2}, "optimizer": {"precondition": "none"}},
}
UNITS = ((1e-4, 0.0), (1e2, 1e4), (1e3, -5e3))
"""Returns, prices around 1e4, pixels: (scale, offset)."""


def _engine(spec: dict[str, Any], streams: int, dtype: str) -> tuple[Engine, list[str]]:
    engine = Engine()
    ids = [f"s{k}" for k in range(streams)]
    for stream_id in ids:
        engine.add(stream_id, StreamSpec.model_validate({**spec, "dtype": dtype}))
    return engine, ids


def _series(values: np.ndarray, spec: dict[str, Any], dtype: str = "float32") -> np.ndarray:
    """The served forecast of each value ``[streams, steps]`` (NaN where none was made), one stream per row,
    all streams in one batch per step."""
    engine, ids = _engine(spec, values.shape[0], dtype)
    preds = np.full(values.shape, np.nan)
    for t in range(values.shape[1]):
        results = engine.observe(ids, list(values[:, t : t + 1]), [None] * len(ids))
        preds[:, t] = [np.nan if r.prediction is None else r.prediction[0] for r in results]
    return preds


def _regression(
    x: np.ndarray, y: np.ndarray, spec: dict[str, Any], dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions ``[streams, steps]`` of each target before learning from it (``x``: ``[streams, steps,
    in]``, ``y``: ``[streams, steps]``), and the learned state's values."""
    engine, ids = _engine(spec, x.shape[0], dtype)
    preds = np.full(y.shape, np.nan)
    for t in range(y.shape[1]):
        results = engine.observe(ids, list(x[:, t]), list(y[:, t : t + 1]))
        preds[:, t] = [r.prediction[0] for r in results]
    learned = [
        v for s in ids for k, v in engine.export(s).items() if k.startswith(("param/", "opt/", "norm/"))
    ]
    return preds, np.concatenate([v.double().flatten().numpy() for v in learned])


def _bouncing(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros(n)
    for t in range(2, n):  # the next change undoes half of the last one
        base[t] = base[t - 1] - 0.5 * (base[t - 1] - base[t - 2]) + rng.normal()
    return base


@pytest.mark.parametrize("name", list(SERIES))
def test_series_forecasts_do_not_depend_on_units(name: str) -> None:
    """The same series as returns, prices and pixels: the same forecasts in units of the series (float64:
    equal up to rounding), never worse than no change by more than 1%."""
    base = _bouncing(500, 3)
    preds = _series(np.stack([base * u + o for u, o in UNITS]), SERIES[name], "float64")
    relative = [(p - o) / u for p, (u, o) in zip(preds, UNITS, strict=True)]
    for other in relative[1:]:
        np.testing.assert_allclose(other, relative[0], rtol=1e-6, atol=1e-6)
    scored = slice(10, None)
    mse = np.mean((relative[0][scored] - base[scored]) ** 2)
    naive = np.mean((base[9:-1] - base[scored]) ** 2)
    assert mse <= 1.01 * naive


@pytest.mark.parametrize("name", list(REGRESSION))
def test_regression_does_not_depend_on_units(name: str) -> None:
    """From the second observation on (the first prediction, before any target, is the model's raw output)
    the predictions are the same in units of the data, and y is learned from x."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 2))
    y = np.tanh(x[:, 0]) - 0.5 * x[:, 1] + 0.1 * rng.normal(size=600)
    xs = np.stack([x * u + o for u, o in UNITS])
    preds, _ = _regression(xs, np.stack([y * u + o for u, o in UNITS]), REGRESSION[name], "float64")
    relative = [(p - o) / u for p, (u, o) in zip(preds, UNITS, strict=True)]
    for other in relative[1:]:
        np.testing.assert_allclose(other[1:], relative[0][1:], rtol=1e-6, atol=1e-6)
    late = slice(300, None)
    assert np.mean((relative[0][late] - y[late]) ** 2) < 0.25 * np.var(y), "it learns y from x"


@pytest.mark.parametrize("name", list(SERIES))
def test_pathological_series_stay_bounded(name: str) -> None:
    """Levels around 1e6, a constant, a 100-sigma jump, alternating signs, flat then bursts: every forecast
    finite, within 11 times the largest change seen of the last value, and the error within 5% of no
    change's."""
    values = np.stack(list(PATHOLOGICAL.values()))
    preds = _series(values, SERIES[name])
    for case, v, p in zip(PATHOLOGICAL, values, preds, strict=True):
        made = ~np.isnan(p)
        assert made[5:].all(), case
        assert np.isfinite(p[made]).all(), case
        assert np.abs(p[made]).max() < 1e30, case
        t = np.flatnonzero(made)
        seen = np.maximum.accumulate(np.r_[0.0, np.abs(np.diff(v))])[t - 1]
        departure = np.abs(p[t] - v[t - 1])
        assert (departure <= 11 * np.maximum(seen, 1e-6 * np.abs(v[t - 1]))).all(), case
        mse, naive = np.mean((p[t] - v[t]) ** 2), np.mean((v[t - 1] - v[t]) ** 2)
        assert mse <= 1.05 * naive + 1e-9, (case, mse, naive)


def _pathological_regression() -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[cases, steps, 2]`` and targets ``[cases, steps]`` shaped like the pathological series."""
    values = np.stack(list(PATHOLOGICAL.values()))
    rng = np.random.default_rng(9)
    size = 1 + np.abs(values).max(1, keepdims=True)
    noise = rng.normal(size=values.shape) * size
    return np.stack([values, noise], 2), values + 0.1 * noise / size


@pytest.mark.parametrize("name", list(REGRESSION))
def test_pathological_regression_stays_bounded(name: str) -> None:
    """The same shapes in inputs and targets: predictions finite and within 11 ranges of the targets seen,
    the learned state finite and small."""
    x, y = _pathological_regression()
    preds, state = _regression(x, y, REGRESSION[name])
    assert np.isfinite(preds).all()
    assert np.abs(preds).max() < 1e30
    assert np.isfinite(state).all()
    assert np.abs(state).max() < 1e30
    for case, target, p in zip(PATHOLOGICAL, y, preds, strict=True):
        lo, hi = np.minimum.accumulate(target)[:-1], np.maximum.accumulate(target)[:-1]
        width = 11 * np.maximum(hi - lo, 1e-6 * np.abs(hi))
        assert ((p[1:] >= lo - width) & (p[1:] <= hi + width)).all(), case


def test_bce_standardises_inputs_only() -> None:
    """Labels from inputs around 1e6: the inputs are standardised, the labels are not (probabilities)."""
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(size=(1, 800, 2)) * 1e3
    y = ((x[..., 0] - 1e6) > 0).astype(float)
    spec = {"model": {"family": "mlp", "in_dim": 2}, "loss": "bce"}
    probs, _ = _regression(x, y, spec)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert np.mean((probs[0, 400:] > 0.5) == (y[0, 400:] > 0.5)) > 0.9
    engine, _ = _engine(spec, 1, "float32")
    assert {k for k in engine.export("s0") if k.startswith("norm/")} == {
        "norm/x_mean",
        "norm/x_var",
        "norm/n",
    }


def test_standardize_false_learns_in_raw_units() -> None:
    """``standardize: false`` keeps no statistics and no mix: an ar stream of raw prices at the default
    learning rate runs away (why standardisation is the default), the default stays by the price."""
    values = 100 + np.cumsum(np.random.default_rng(1).normal(size=(1, 300)), 1) * 0.1
    level = {"model": {"family": "ar", "target": "level"}, "optimizer": {"precondition": "none"}}
    raw = _series(values, {**level, "standardize": False, "mix_naive": False})
    default = _series(values, level)
    assert not np.isfinite(raw[0, -50:]).all() or np.nanmax(np.abs(raw)) > 1e6
    assert np.abs(default[0, 4:] - values[0, 3:-1]).max() < 10
    engine, _ = _engine({**level, "standardize": False, "mix_naive": False}, 1, "float32")
    assert not any(k.startswith(("norm/", "mix/")) for k in engine.export("s0"))


def test_standardize_and_mix_choices_get_their_own_pools() -> None:
    """A pool's rows hold the statistics and the mix or not, and its round reads the choice once: streams
    that differ in ``standardize`` or ``mix_naive`` never share a pool (before, a scale-free stream created
    second took the first one's choices)."""
    engine = Engine()
    variants = [{}, {"standardize": False}, {"mix_naive": False}]
    for family in ({"family": "ar", "dim": 1}, {"family": "ar", "dim": 1, "hidden": [4]}):
        for k, variant in enumerate(variants):
            engine.add(f"{family.get('hidden')}{k}", StreamSpec.model_validate({"model": family, **variant}))
    assert len(engine.pools) == 6
    values = 100 + np.cumsum(np.random.default_rng(3).normal(size=40))
    for v in values:
        engine.observe(list(engine), [np.array([v])] * len(engine), [None] * len(engine))
    tracking_raw = engine.export("None1")
    assert bool((tracking_raw["track/scale_m2"] == 0).all()), "no scales measured: raw units"
    assert float(engine.export("None0")["track/scale_m2"][0]) > 0
