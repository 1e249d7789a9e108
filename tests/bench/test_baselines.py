"""bench/baselines.py: the batched filters equal a plain per-stream loop (float64), and find what is there."""

from __future__ import annotations

import numpy as np
import pytest

from bench.baselines import FilterPoint, filter_forecasts, kalman_grid, rls_grid
from trackin.replay.scoring import last_value, previous_index, scored_set


def reference(
    values: np.ndarray, codes: np.ndarray, clock: np.ndarray, point: FilterPoint, lags: int
) -> np.ndarray:
    """The filter of the module docstring, one stream and coordinate at a time."""
    velocities = []
    for s in np.unique(codes):
        mine = np.flatnonzero(codes == s)
        dt = np.diff(clock[mine])
        velocities.append(np.diff(values[mine], axis=0) / np.where(dt == 0, 1, dt)[:, None])
    moving = np.abs(np.concatenate(velocities).ravel())
    unit = float(np.median(moving[moving > 0]))
    out = np.full(values.shape, np.nan)
    for s in np.unique(codes):
        mine = np.flatnonzero(codes == s)
        for d in range(values.shape[1]):
            w, cov, h = np.zeros(lags), np.eye(lags), np.zeros(lags)
            for k in range(1, mine.size):
                i, j = mine[k], mine[k - 1]
                dt = clock[i] - clock[j] or 1.0
                out[i, d] = values[j, d] + (w @ h) * unit * dt
                y = (values[i, d] - values[j, d]) / dt / unit
                cov = cov / point.forget + point.q * np.eye(lags)
                ph = cov @ h
                gain = ph / (h @ ph + 1)
                w = w + gain * (y - w @ h)
                cov = cov - np.outer(gain, ph)
                cov = (cov + cov.T) / 2
                h = np.r_[y, h[:-1]]
    return out


@pytest.mark.parametrize(
    "point", [FilterPoint(0.0, 1.0), FilterPoint(1e-3, 1.0), FilterPoint(0.0, 0.95), FilterPoint(0.1, 1.0)]
)
@pytest.mark.parametrize("lags", [1, 3])
def test_batched_filter_equals_the_loop(point: FilterPoint, lags: int) -> None:
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 4, size=120)  # four streams of different lengths, interleaved
    clock = np.cumsum(rng.integers(1, 3, size=120)).astype(np.float64)  # frame gaps of 1 or 2
    values = np.cumsum(rng.normal(size=(120, 2)), axis=0)
    batched = filter_forecasts(values, codes, clock, [FilterPoint(9.0, 1.0), point], lags=lags)[1]
    expected = reference(values, codes, clock, point, lags)
    np.testing.assert_allclose(batched, expected, rtol=1e-10, atol=1e-10)


def test_the_filters_learn_an_autoregression() -> None:
    """Changes u_k = -0.5 u_{k-1} + e_k: the best forecast has 3/4 of the no-change forecast's MSE."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=4000)
    changes = np.zeros(4000)
    for k in range(1, 4000):
        changes[k] = -0.5 * changes[k - 1] + noise[k]
    values = 100 + np.cumsum(changes)[:, None]
    codes = np.zeros(4000, np.int64)
    grid = kalman_grid() + rls_grid()
    forecasts = filter_forecasts(values, codes, np.arange(4000.0), grid)
    scored = scored_set(codes)
    base = ((last_value(values, previous_index(codes)) - values)[scored] ** 2).mean()
    ratios = [((f - values)[scored] ** 2).mean() / base for f in forecasts]
    assert min(ratios) == pytest.approx(0.75, abs=0.03)
    assert np.isfinite(ratios).all()
