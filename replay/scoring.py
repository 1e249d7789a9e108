"""How a replay is scored: a fixed set of arrivals, and the strongest trivial baseline on the same arrivals.

All functions work on a file's observations in arrival order, ``values[i]`` of stream ``codes[i]``, and are
shared with the real-data benchmark (``bench/realdata.py``), so both score the same way:

- **The scored set** is fixed: every stream's observations from its third on (two earlier values let every
  method forecast, constant velocity included), whatever the model's ``lags``, minus the first change across
  a session gap. A method that has no forecast for a scored arrival (trackin while its lag window fills) is
  scored as the last value, which is what its user gets.
- **Session gaps** (prices): a spacing longer than ``factor`` times the median positive spacing of the
  stream. The change across it is the overnight or weekend move, not a tick-to-tick change, so it is not
  scored. ``factor`` is 1000 by default: tick spacings are heavy-tailed, and at 30x the E-mini sample has
  5,218 "gaps" (quiet seconds at night, carrying 7% of the squared changes) while at 1000x it has exactly its
  one session break, and the GBP/USD minute bars their four weekends.
- **Baselines**: no change (the last value) for prices; constant velocity for boxes,
  ``last + (last - previous) * (t - t_last) / (t_last - t_previous)`` on the frame numbers, so a track that
  skips frames is extrapolated over the frames it skipped.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FIRST_SCORED",
    "GAP_FACTOR",
    "constant_velocity",
    "last_value",
    "or_last_value",
    "position_in_stream",
    "previous_index",
    "scored_set",
    "session_gaps",
]

FIRST_SCORED = 2
"""Position in its stream (0-based) of a stream's first scored observation: its third."""
GAP_FACTOR = 1000.0
"""A spacing longer than this many median spacings is a session gap."""


def previous_index(codes: np.ndarray) -> np.ndarray:
    """For each observation, the index of the same stream's previous observation (-1 for the first)."""
    order = np.argsort(codes, kind="stable")
    previous = np.full(codes.size, -1, dtype=np.int64)
    same = codes[order[1:]] == codes[order[:-1]]
    previous[order[1:][same]] = order[:-1][same]
    return previous


def position_in_stream(codes: np.ndarray) -> np.ndarray:
    """For each observation, how many observations of its stream came before it."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]] if codes.size else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(codes.size), 0))
    position = np.empty(codes.size, dtype=np.int64)
    position[order] = np.arange(codes.size) - start
    return position


def session_gaps(times: np.ndarray | None, previous: np.ndarray, factor: float = GAP_FACTOR) -> np.ndarray:
    """``[n]`` bool: the observation is the first after a session gap (none without times)."""
    gaps = np.zeros(previous.size, dtype=bool)
    if times is None:
        return gaps
    has = np.flatnonzero(previous >= 0)
    spacing = times[has] - times[previous[has]]
    positive = spacing[spacing > 0]
    if positive.size:
        gaps[has] = spacing > factor * float(np.median(positive))
    return gaps


def scored_set(codes: np.ndarray, gaps: np.ndarray | None = None) -> np.ndarray:
    """``[n]`` bool: every stream's observations from its third on, minus the first after a session gap."""
    scored: np.ndarray = position_in_stream(codes) >= FIRST_SCORED
    return scored & ~gaps if gaps is not None else scored


def last_value(values: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The no-change forecast ``[n, dim]``: the stream's previous value (NaN for its first)."""
    out: np.ndarray = values[np.maximum(previous, 0)].copy()
    out[previous < 0] = np.nan
    return out


def constant_velocity(values: np.ndarray, previous: np.ndarray, clock: np.ndarray) -> np.ndarray:
    """The constant-velocity forecast ``[n, dim]`` on ``clock`` (frame numbers; the last value when the
    stream has one earlier observation, NaN for its first)."""
    out = last_value(values, previous)
    p = np.flatnonzero(previous >= 0)
    p = p[previous[previous[p]] >= 0]
    last, before = previous[p], previous[previous[p]]
    elapsed = (clock[last] - clock[before]).astype(np.float64)
    ratio = np.divide(clock[p] - clock[last], elapsed, out=np.ones(p.size), where=elapsed != 0)
    out[p] = values[last] + (values[last] - values[before]) * ratio[:, None]
    return out


def or_last_value(forecasts: np.ndarray, values: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, int]:
    """``forecasts`` with every row that has a NaN replaced by the last value, and how many were replaced
    (among observations that have a last value)."""
    missing = np.isnan(forecasts).any(axis=1) & (previous >= 0)
    out = forecasts.copy()
    out[missing] = values[previous[missing]]
    return out, int(missing.sum())
