"""Classical one-step forecasters for the real-data benchmark, vectorised in float64 numpy.

Each takes a data set's observations in arrival order (``values[i]`` ``[n, dim]`` of stream ``codes[i]`` at
``clock[i]``: frame numbers for boxes, the observation's index in its stream for prices) and returns the
forecast of every observation made from the ones before it, ``[n, dim]`` (NaN where a method has none).

- **Last value** and **constant velocity**: :mod:`trackin.replay.scoring` (one definition for replay and
  the benchmark).
- **Kalman filter, random-walk AR coefficients**: for each stream and coordinate, the next *velocity*
  ``u_k = (v_k - v_{k-1}) / (t_k - t_{k-1})`` (for prices, the change) is regressed on the last ``lags``
  velocities (zeros before a stream has them), ``u_k = w_k . h_k + e_k``, with ``w_k = w_{k-1} + N(0, q I)``
  and ``e_k ~ N(0, R)``. The forecast is ``v_{k-1} + (w . h_k) (t_k - t_{k-1})``. The filter runs in the
  scale-free form ``P / R`` (only ``q / R`` matters) on velocities in units of the data set's median non-zero
  absolute velocity, with prior ``w_0 = 0`` (the first forecasts are the last value) and ``P_0 / R = I``.
- **RLS with forgetting** ``lambda``: the same regression, the covariance inflated by ``1 / lambda`` instead
  of the random walk (``q = 0``).

Both filters run every point of a small grid at once (``q``: 0, then 1e-8 to 0.1 half a decade apart;
``lambda``: 0.9 to 0.9999), as extra rows of the same arrays. The benchmark reports the best point on each
data set: they are *tuned* on the data they are scored on, which flatters them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackin.replay.scoring import position_in_stream

__all__ = [
    "FILTER_LAGS",
    "KALMAN_Q",
    "RLS_FORGET",
    "FilterPoint",
    "filter_forecasts",
    "kalman_grid",
    "rls_grid",
]

FILTER_LAGS = 8
"""Lags of the filters' AR: the default ``lags`` of trackin's ``ar`` family."""
KALMAN_Q = (0.0, *(10.0 ** (k / 2) for k in range(-16, -1)))  # 0 (fixed coefficients), 1e-8 ... 1e-1
RLS_FORGET = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


@dataclass(frozen=True, slots=True)
class FilterPoint:
    """One grid point: state noise ``q`` (per step, relative to R) and forgetting factor ``forget``."""

    q: float
    forget: float

    @property
    def label(self) -> str:
        return f"q={self.q:.2g}" if self.forget == 1.0 else f"λ={self.forget:g}"


def kalman_grid() -> list[FilterPoint]:
    return [FilterPoint(q, 1.0) for q in KALMAN_Q]


def rls_grid() -> list[FilterPoint]:
    return [FilterPoint(0.0, lam) for lam in RLS_FORGET]


def _padded(codes: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Observations laid out per stream: ``[streams, longest, ...]`` arrays (NaN padding), with each
    observation's stream and position."""
    position = position_in_stream(codes)
    streams, longest = int(codes.max()) + 1, int(position.max()) + 1
    out = []
    for column in columns:
        grid = np.full((streams, longest, *column.shape[1:]), np.nan)
        grid[codes, position] = column
        out.append(grid)
    return codes, position, out


def filter_forecasts(
    values: np.ndarray,
    codes: np.ndarray,
    clock: np.ndarray,
    points: list[FilterPoint],
    lags: int = FILTER_LAGS,
) -> np.ndarray:
    """Forecasts ``[points, n, dim]`` of the AR-on-velocities filter at each grid point (module docstring)."""
    n, dim = values.shape
    if n == 0:
        return np.zeros((len(points), 0, dim))
    codes, position, (v, t) = _padded(codes, values, clock.astype(np.float64))
    streams, longest = t.shape
    elapsed = np.diff(t, axis=1)  # [streams, longest - 1]
    elapsed = np.where(elapsed == 0, 1.0, elapsed)
    velocity = np.diff(v, axis=1) / elapsed[..., None]  # [streams, longest - 1, dim]
    moving = np.abs(velocity[np.isfinite(velocity)])
    unit = float(np.median(moving[moving > 0])) if (moving > 0).any() else 1.0
    velocity = velocity / unit

    g = len(points)
    q = np.array([p.q for p in points]).reshape(g, 1, 1, 1, 1)
    inflate = (1.0 / np.array([p.forget for p in points])).reshape(g, 1, 1, 1, 1)
    eye = np.eye(lags)
    w = np.zeros((g, streams, dim, lags))
    cov = np.broadcast_to(eye, (g, streams, dim, lags, lags)).copy()
    h = np.zeros((streams, dim, lags))  # the last `lags` velocities, newest first
    out = np.full((g, streams, longest, dim), np.nan)
    for k in range(1, longest):
        live = np.isfinite(t[:, k])  # streams with a k-th observation
        guess = np.einsum("gsdl,sdl->gsd", w, h)
        out[:, :, k] = v[None, :, k - 1] + guess * unit * elapsed[None, :, k - 1, None]
        y = np.nan_to_num(velocity[:, k - 1])  # [streams, dim]
        cov = cov * inflate + q * eye
        ph = np.einsum("gsdij,sdj->gsdi", cov, h)
        gain = ph / (np.einsum("sdi,gsdi->gsd", h, ph) + 1.0)[..., None]
        err = (y[None] - guess)[..., None]
        keep = live[None, :, None, None]
        w = np.where(keep, w + gain * err, w)
        new_cov = cov - gain[..., :, None] * ph[..., None, :]
        cov = np.where(keep[..., None], 0.5 * (new_cov + np.swapaxes(new_cov, -1, -2)), cov)
        h = np.where(live[:, None, None], np.concatenate([y[..., None], h[..., :-1]], axis=-1), h)
    return out[:, codes, position]
