"""The scale-free, preconditioned path (models/tracking.py): it equals its reference, it is scale-free, it
never diverges, it does no harm against the naive forecast, and boxes start at constant velocity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from tests.models.reference_tracking import TrackingReference
from trackin.models import tracking
from trackin.models.engine import Engine
from trackin.models.kernels import Kernels
from trackin.models.specs import StreamSpec

SPECS: dict[str, dict[str, Any]] = {
    "linear": {"model": {"family": "linear", "in_dim": 3, "out_dim": 2}},
    "linear-huber-nomix": {"model": {"family": "linear", "in_dim": 2}, "loss": "huber", "mix_naive": False},
    "ar-delta": {"model": {"family": "ar", "dim": 1, "lags": 3}},
    "ar-level": {"model": {"family": "ar", "dim": 2, "lags": 2, "target": "level"}},
    "ar-raw-momentum": {
        "model": {"family": "ar", "dim": 1, "lags": 2},
        "standardize": False,
        "optimizer": {"beta_rule": "norm", "eta": 0.01, "forget": 0.99, "weight_decay": 0.001},
    },
    "track": {"model": {"family": "track", "dim": 4, "lags": 2}},
    "track-lr": {"model": {"family": "track", "dim": 2, "lags": 3}, "optimizer": {"lr": 0.5, "beta": 0.0}},
}


def _data(spec: StreamSpec, rng: np.random.Generator, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    model = spec.model
    if model.family == "linear":
        x = rng.normal(size=model.in_dim) * 50
        y = x[: model.out_dim] * 0.3 + 0.01 * t + rng.normal(size=model.out_dim)
        if rng.random() < 0.05:
            x[0] = np.nan
        return x, y
    value = 1000 + 3.0 * t + rng.normal(size=model.dim).cumsum() * 2
    if rng.random() < 0.05:
        value[0] = np.inf
    return value, None


@pytest.mark.parametrize("kernels", ["auto", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_engine_equals_reference(name: str, dtype: str, kernels: Kernels) -> None:
    """Several streams of one spec, batches with repeats, times with gaps: every answer as the reference,
    from the fused kernel (``auto`` on the CPU) and from the torch round."""
    spec = StreamSpec.model_validate({**SPECS[name], "dtype": dtype})
    assert spec.tracking
    engine, refs = Engine(kernels=kernels), [TrackingReference(spec) for _ in range(3)]
    for k in range(3):
        engine.add(f"s{k}", spec)
    (pool,) = engine.pools
    assert pool.fused == (kernels == "auto"), "auto runs the fused kernel on the CPU"
    rng = np.random.default_rng(len(name))
    clocks = [0.0, 0.0, 0.0]
    steps = 64  # about 85 steps per stream: the 32 of the scale warm-up and as many after
    # float32: the engine's batched kernels round otherwise than the reference's one-row ones; the RLS
    # covariance update is a contraction, so differences do not grow with the run: a few hundred ulps.
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == "float64" else {"rtol": 5e-4, "atol": 5e-4}
    for t in range(steps):
        batch = [int(k) for k in rng.integers(0, 3, size=4)]
        data, times = [], []
        for k in batch:
            data.append(_data(spec, rng, t))
            clocks[k] += float(rng.choice([1, 1, 1, 2, 5]))
            times.append(clocks[k] if spec.model.family != "linear" else None)
        results = engine.observe([f"s{k}" for k in batch], [d[0] for d in data], [d[1] for d in data], times)
        for k, (x, y), ts, item in zip(batch, data, times, results, strict=True):
            want = refs[k].observe(torch.from_numpy(x), None if y is None else torch.from_numpy(y), ts)
            assert item.nonfinite == want.nonfinite, (t, k)
            assert item.applied == want.applied, (t, k)
            for got, expected in ((item.prediction, want.prediction), (item.forecast, want.forecast)):
                if expected is None or got is None:
                    assert got is None or not all(map(math.isfinite, got)), (t, k, got, expected)
                    continue
                torch.testing.assert_close(
                    torch.tensor(got, dtype=torch.float64),
                    torch.tensor(expected, dtype=torch.float64),
                    **tol,
                    msg=f"step {t} stream {k}",
                )


def _series_mse(
    values: np.ndarray, spec: dict[str, Any], dtype: str = "float32"
) -> tuple[float, float, np.ndarray]:
    """The served forecasts' MSE, the no-change forecast's, and the forecasts, for one series."""
    engine = Engine()
    engine.add("s", StreamSpec.model_validate({**spec, "dtype": dtype}))
    preds = np.full(len(values), np.nan)
    for t, v in enumerate(values):
        (r,) = engine.observe(["s"], [np.array([v])], [None])
        if r.prediction is not None:
            preds[t] = r.prediction[0]
    scored = slice(2, None)
    err = preds[scored] - values[scored]
    naive = values[1:-1]
    if spec["model"]["family"] == "track":
        naive = naive + np.diff(values)[:-1]  # the last change again
    return float(np.mean(err**2)), float(np.mean((naive - values[2:]) ** 2)), preds


AR = {"model": {"family": "ar", "dim": 1}}


def test_scale_free_one_default_for_returns_prices_and_pixels() -> None:
    """The same series at 1e-4, 1e2 and 1e3 scale: the same relative forecasts (float64: exactly scaled)."""
    rng = np.random.default_rng(3)
    base = np.zeros(600)
    for t in range(2, 600):  # a bouncing series: the next change undoes half of the last one
        base[t] = base[t - 1] - 0.5 * (base[t - 1] - base[t - 2]) + rng.normal()
    ratios = []
    for scale, offset in ((1e-4, 0.0), (1e2, 0.0), (1e3, 5e3)):
        mse, naive, preds = _series_mse(base * scale + offset, AR, "float64")
        ratios.append(mse / naive)
        np.testing.assert_allclose((preds[2:] - offset) / scale, (preds[2:] - offset) / scale, rtol=1e-9)
    assert max(ratios) - min(ratios) < 1e-6, ratios
    assert ratios[0] < 0.9, "it learns the bounce"


PATHOLOGICAL = {
    "levels around 1e6": 1e6 + np.cumsum(np.random.default_rng(1).normal(size=800)),
    "constant": np.full(800, 42.0),
    "a 100-sigma jump": np.r_[np.random.default_rng(2).normal(size=400).cumsum(), np.zeros(400)]
    + np.r_[np.zeros(400), np.full(400, 100.0)],
    "alternating signs": np.array([(-1.0) ** t * 5 for t in range(800)]),
    "flat then bursts": np.r_[np.zeros(300), np.random.default_rng(4).normal(size=200) * 1e3, np.zeros(300)],
}


@pytest.mark.parametrize("family", ["ar", "track"])
@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_series_stay_bounded(family: str, name: str) -> None:
    values = PATHOLOGICAL[name]
    spec = {"model": {"family": family, "dim": 1}}
    mse, naive, preds = _series_mse(values, spec)
    assert np.isfinite(preds[1:]).all(), "a forecast from the second value on, always finite"
    assert np.abs(preds[1:]).max() < 1e30
    scale = max(np.abs(np.diff(values)).max(), 1.0)
    assert np.abs(preds[2:] - values[1:-1]).max() <= 11 * scale, "within BOUND of the scale it has seen"
    if naive > 0:
        assert mse <= 1.05 * naive, (mse, naive)  # do no harm
    else:
        assert mse < 1e-9


def test_random_walk_is_never_materially_worse_than_no_change() -> None:
    rng = np.random.default_rng(5)
    for seed in range(5):
        walk = 100 + np.cumsum(np.random.default_rng(seed).normal(size=3000)) * 0.01
        mse, naive, _ = _series_mse(walk, AR)
        assert mse <= 1.01 * naive, (seed, mse / naive)
    assert rng is not None


def test_track_is_constant_velocity_from_the_second_observation() -> None:
    """A box moving at constant velocity (with a gap in frames) is forecast from the third value as constant
    velocity does, to 0.1% (after MIX_WARMUP = 3 steps the mix serves a sliver, under 1%, of the model,
    which learned from the first velocity against a naive rate of 0: 0.06 px here)."""
    engine = Engine()
    engine.add("obj", StreamSpec.model_validate({"model": {"family": "track"}, "dtype": "float64"}))
    frames = [1, 2, 3, 4, 7, 8, 9]
    boxes = [np.array([100.0 + 5 * f, 50.0 - 2 * f, 30.0, 60.0]) for f in frames]
    results = [
        engine.observe(["obj"], [b], [None], [float(f)])[0] for f, b in zip(frames, boxes, strict=True)
    ]
    assert results[0].warming
    assert results[0].prediction is None
    np.testing.assert_allclose(results[1].prediction, boxes[0])  # no velocity yet: the last box
    for r, b in zip(results[2:], boxes[2:], strict=True):
        np.testing.assert_allclose(r.prediction, b, rtol=1e-3, atol=1e-9)


def test_time_must_advance_and_state_is_untouched() -> None:
    engine = Engine()
    engine.add("obj", StreamSpec.model_validate({"model": {"family": "track", "dim": 1}}))
    for f in (1.0, 2.0, 3.0):
        engine.observe(["obj"], [np.array([f])], [None], [f])
    before = engine.export("obj")
    (r,) = engine.observe(["obj"], [np.array([9.0])], [None], [3.0])
    assert r.nonfinite
    assert not r.applied
    after = engine.export("obj")
    for key, value in before.items():
        if key != "fig/nonfinite":
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def _drift_mse(spec: dict[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    engine = Engine()
    engine.add("s", StreamSpec.model_validate({**spec, "dtype": "float64"}))
    errors = [
        (engine.observe(["s"], [xt], [yt])[0].prediction[0] - yt[0]) ** 2  # type: ignore[index]
        for xt, yt in zip(x, y, strict=True)
    ]
    return float(np.mean(errors[200:]))


def test_the_heads_follow_fast_drift_and_keep_long_memory() -> None:
    """The default heads (forgetting 0.8 ... 0.999, weighed by their recent errors) track coefficients that
    move fast about as well as the best single forgetting factor there (0.9), far better than the long
    memory the real data want (0.999), and are about as good as 0.999 on coefficients that stand still."""
    rng = np.random.default_rng(3)
    steps = 1500
    x = rng.normal(size=(steps, 4))
    moving = 1 + np.cumsum(rng.normal(size=(steps, 4)) * 0.03, 0)
    still = np.ones((steps, 4))
    linear = {"model": {"family": "linear", "in_dim": 4}}
    for w, fast in ((moving, True), (still, False)):
        y = ((w * x).sum(1) + 0.1 * rng.normal(size=steps)).reshape(-1, 1)
        heads = _drift_mse(linear, x, y)
        slow = _drift_mse({**linear, "optimizer": {"forget": 0.999}}, x, y)
        quick = _drift_mse({**linear, "optimizer": {"forget": 0.9}}, x, y)
        if fast:
            assert heads < 0.3 * slow, (heads, slow)
            assert heads < 1.15 * quick, (heads, quick)
        else:
            assert heads < 1.15 * slow, (heads, slow)
            assert heads < quick, (heads, quick)


def test_a_jump_in_the_coefficients_is_learned_at_full_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the coefficients jump, the residuals stay large: the running RMS that sets the step's clip
    learns from them (clipped at STAT_CLIP, not CLIP), so the clip widens within a few steps and the jump is
    learned about twice as fast as with the RMS fed the clipped residuals (STAT_CLIP = CLIP), even with the
    step's clip at 3; the default CLIP 8 learns it faster still; once it is learned, they agree."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    w = np.where(np.arange(400)[:, None] < 300, [1.0, -1.0], [-1.0, 2.0])
    y = (w * x).sum(1, keepdims=True) + 0.1 * rng.normal(size=(400, 1))

    def errors() -> tuple[float, float]:
        engine = Engine()
        spec = {"model": {"family": "linear", "in_dim": 2}, "dtype": "float64"}
        engine.add("s", StreamSpec.model_validate(spec))
        e = []
        for a, b in zip(x, y, strict=True):
            (r,) = engine.observe(["s"], [a], [b])
            assert r.prediction is not None
            e.append((r.prediction[0] - b[0]) ** 2)
        return sum(e[300:350]), sum(e[350:])

    default_jump, default_after = errors()
    monkeypatch.setattr(tracking, "CLIP", 3.0)
    wide_jump, wide_after = errors()
    monkeypatch.setattr(tracking, "STAT_CLIP", tracking.CLIP)
    narrow_jump, narrow_after = errors()
    assert wide_jump < 0.6 * narrow_jump, (wide_jump, narrow_jump)
    assert default_jump < 0.95 * wide_jump, (default_jump, wide_jump)
    assert wide_after < 1.1 * narrow_after, (wide_after, narrow_after)
    assert default_after < 1.1 * narrow_after, (default_after, narrow_after)


@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_linear_predict_answers_what_observe_serves(kernels: Kernels) -> None:
    """A linear stream's forecast divides the arriving input by scales that include it, also during the
    scales' warm-up: ``predict`` on an input answers what ``observe`` then serves for it (``predict`` in
    the earlier inputs' scales fails this from the second input on)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3)) * [1e-3, 1.0, 1e3]
    y = x @ np.array([[2e3], [-1.0], [1e-3]]) + 0.01 * rng.normal(size=(12, 1))
    engine = Engine("cpu", kernels)
    spec = {"model": {"family": "linear", "in_dim": 3}, "dtype": "float64"}
    engine.add("s", StreamSpec.model_validate(spec))
    for xt, yt in zip(x, y, strict=True):
        (asked,) = engine.predict(["s"], [xt])
        (served,) = engine.observe(["s"], [xt], [yt])
        assert asked is not None
        assert served.prediction is not None
        np.testing.assert_allclose(asked, served.prediction, rtol=1e-9, atol=1e-12)


def test_linear_input_scales_pool_only_what_looks_like_one_scale() -> None:
    """During the warm-up a linear stream's input scales are shrunk to their common (log) scale by the share
    of sampling noise in their spread: inputs of one scale measured once are pooled (one ``|x_1j|`` near 0
    would make the prior ``~ 1 / x_1j^2``), inputs of different units keep nearly their own scales, and the
    frozen scales are each input's own, to the bit; the target's scale is never pooled."""
    lay = tracking.layout(StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 4}}).model)
    one_scale = torch.tensor([[0.2, 1.0, 2.0, 0.5, 9.0]], dtype=torch.float64).square()
    units = torch.tensor([[1e-3, 1.0, 1e3, 1e6, 9.0]], dtype=torch.float64).square()
    first, frozen = torch.tensor([1.0]), torch.tensor([float(tracking.SCALE_WARMUP)])
    pooled = tracking.scales_of(lay, one_scale, first)[0]
    assert pooled[:4].max() / pooled[:4].min() < 1.01, pooled  # their own: 10 apart
    assert pooled[4] == 9.0
    kept = tracking.scales_of(lay, units, first)[0]
    np.testing.assert_allclose(kept[:4], [1e-3, 1.0, 1e3, 1e6], rtol=0.5)
    assert torch.equal(tracking.scales_of(lay, one_scale, frozen), one_scale.sqrt())
    assert torch.equal(tracking.scales_of(lay, units, frozen), units.sqrt())
