"""The fixed scored set and the trivial baselines of ``trackin replay`` (and of bench/realdata.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trackin.replay.scoring import (
    constant_velocity,
    last_value,
    or_last_value,
    position_in_stream,
    previous_index,
    scored_set,
    session_gaps,
)

# Two streams interleaved: a (codes 0) at frames 1, 2, 3, 6 and b (code 1) at frames 2, 4.
CODES = np.array([0, 0, 1, 0, 1, 0])
FRAMES = np.array([1, 2, 2, 3, 4, 6])
VALUES = np.array([[0.0], [1.0], [10.0], [3.0], [20.0], [9.0]])


def test_previous_and_position() -> None:
    assert previous_index(CODES).tolist() == [-1, 0, -1, 1, 2, 3]
    assert position_in_stream(CODES).tolist() == [0, 1, 0, 2, 1, 3]
    assert position_in_stream(np.zeros(0, np.int64)).tolist() == []


def test_scored_set_starts_at_each_streams_third_observation() -> None:
    assert scored_set(CODES).tolist() == [False, False, False, True, False, True]
    gaps = np.array([False, False, False, False, False, True])
    assert scored_set(CODES, gaps).tolist() == [False, False, False, True, False, False]


def test_baselines() -> None:
    previous = previous_index(CODES)
    last = last_value(VALUES, previous)
    assert np.isnan(last[[0, 2]]).all()
    assert last[[1, 3, 4, 5], 0].tolist() == [0.0, 1.0, 10.0, 3.0]
    cv = constant_velocity(VALUES, previous, FRAMES)
    # a: 1 -> 3 is 2 a frame (frames 2 -> 3), so frame 6 is 3 + 2 * 3; a's third: 1 + 1 * 1; b's second: last
    assert cv[[1, 3, 4, 5], 0].tolist() == [0.0, 2.0, 10.0, 9.0]
    assert np.isnan(cv[[0, 2]]).all()


def test_constant_velocity_on_a_repeated_frame_keeps_the_last_step() -> None:
    cv = constant_velocity(np.array([[0.0], [2.0], [5.0]]), np.array([-1, 0, 1]), np.array([4, 4, 5]))
    assert cv[2, 0] == 4.0  # elapsed 0 between the two earlier boxes: ratio 1


def test_missing_forecasts_become_the_last_value() -> None:
    previous = previous_index(CODES)
    forecasts = np.full_like(VALUES, 7.0)
    forecasts[[0, 1, 3]] = np.nan
    filled, count = or_last_value(forecasts, VALUES, previous)
    assert count == 2  # observation 0 has no last value
    assert filled[[1, 3], 0].tolist() == [0.0, 1.0]
    assert np.isnan(filled[0, 0])


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ([1.0] * 9, []),
        ([1.0] * 4 + [5000.0] + [1.0] * 4, [5]),  # one session break
        ([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 999.0, 1001.0], [9]),  # median of the positive spacings: 1
    ],
)
def test_session_gaps(spacing: list[float], expected: list[int]) -> None:
    times = np.r_[0.0, np.cumsum(spacing)]
    codes = np.zeros(times.size, np.int64)
    gaps = session_gaps(times, previous_index(codes))
    assert np.flatnonzero(gaps).tolist() == expected
    assert not session_gaps(None, previous_index(codes)).any()
    assert np.flatnonzero(session_gaps(times, previous_index(codes), factor=1.5)).tolist() == sorted(
        {*expected, *(np.flatnonzero(np.r_[0.0, spacing] > 1.5)).tolist()}
    )
