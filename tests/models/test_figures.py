"""The engine's typed figures (models/figures.py) read what the rounds wrote into the streams' rows."""

from __future__ import annotations

import math

import numpy as np
import torch

from trackin.models.engine import Engine
from trackin.models.specs import ARModel, DriftSpec, LinearModel, SGDSpec, StreamSpec

LIN = StreamSpec(model=LinearModel(in_dim=2), dtype="float64", drift=DriftSpec(warmup=2, threshold=0.5))
AR = StreamSpec(model=ARModel(lags=2, target="level"), optimizer=SGDSpec())


def test_a_new_stream_has_no_figures_yet() -> None:
    engine = Engine()
    engine.add("a", LIN)
    f = engine.figures("a")
    assert (f.steps, f.nonfinite_skips, f.drifts, f.last_drift_step, f.warming) == (0, 0, 0, None, False)
    assert all(math.isnan(v) for v in (f.last_loss, f.loss_ewma, f.grad_norm, f.beta, f.eps_norm))


def test_figures_follow_the_rounds() -> None:
    engine = Engine()
    engine.add("a", LIN)
    engine.add("r", AR)
    x, y = np.array([1.0, -1.0]), np.array([0.5])
    results = [engine.observe(["a"], [x], [y])[0] for _ in range(3)]
    engine.observe(["a"], [np.array([np.nan, 0.0])], [y])
    for _ in range(20):
        engine.observe(["a"], [x], [np.array([50.0])])  # the loss jumps: the detector fires
    engine.observe(["r"], [np.array([1.0])], [None])
    a, r = engine.figures_of(["a", "r"])
    assert a.steps == 23
    assert a.nonfinite_skips == 1
    assert a.drifts >= 1
    assert a.last_drift_step is not None
    assert 3 < a.last_drift_step <= 23
    assert results[-1].loss is not None
    assert not a.warming
    assert (r.steps, r.warming) == (0, True)
    assert engine.figures("a") == a


def test_fleet_figures_hold_the_streams_that_stepped() -> None:
    engine = Engine()
    for name in ("a", "b", "c"):
        engine.add(name, LIN)
    engine.add("r", AR)
    engine.remove("c")
    x, y = np.array([1.0, 2.0]), np.array([1.0])
    engine.observe(["a", "b"], [x, x], [y, y])
    fleet = engine.fleet_figures()
    assert fleet.loss_ewma.dtype == torch.float64
    assert fleet.loss_ewma.shape == fleet.beta.shape == fleet.eps_norm.shape == (2,)
    expected = [engine.figures(s).loss_ewma for s in ("a", "b")]
    assert fleet.loss_ewma.tolist() == expected
    assert Engine().fleet_figures().loss_ewma.shape == (0,)
