"""The naive mix of first-order series streams (docs/trackin.md, "Scale-free first order").

A first-order ``ar`` stream (``mlp``-like hidden layers, SGD, Adam, TrackIn with ``precondition: none``)
serves a mix of its model's forecast and the naive one (no change), weighted by their recent absolute errors,
exactly as the scale-free path does (:mod:`models.tracking`, whose constants it uses): the model is served
only once it has beaten the naive forecast, so a stream that learns slowly or not at all is not worse than
predicting that nothing moves. Batched over gathered rows, no host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trackin.models import keys
from trackin.models.specs import ARModel, StreamSpec
from trackin.models.tracking import MIX_ETA, MIX_POWER

__all__ = ["MIX_BIAS", "MIX_RHO", "MIX_WARMUP", "applies", "entries", "update", "weight"]

MIX_RHO = 0.99
"""Discount of the model's and the naive forecast's absolute errors (about 100 observations; the tracking
path's is shorter)."""
MIX_BIAS = 8.0
"""The first-order path's burden of proof (the tracking path's was lowered with its heads; this one keeps
the value it was measured with)."""
MIX_WARMUP = 10
"""Steps of the first-order path during which only the naive forecast is served."""


def applies(spec: StreamSpec) -> bool:
    """First-order series streams of a regression loss with ``mix_naive`` (the default)."""
    return isinstance(spec.model, ARModel) and spec.mix_naive and spec.loss != "bce" and not spec.tracking


def entries(spec: StreamSpec) -> list[tuple[str, tuple[int, ...]]]:
    """The mix's keys and per-stream shapes (float buffer), with the skill figures; none if it does not
    apply."""
    if not applies(spec):
        return []
    assert isinstance(spec.model, ARModel)
    dim = spec.model.dim
    return [
        (keys.MIX_MODEL, (dim,)),
        (keys.MIX_NAIVE, (dim,)),
        (keys.MIX_N, ()),
        *((key, ()) for key in keys.SKILL_FIGURES),
    ]


def weight(model_err: Tensor, naive_err: Tensor, n: Tensor, steps: Tensor) -> Tensor:
    """``[rows, dim]``: the model's share of the served forecast, from the discounted absolute errors of
    the model and the naive forecast (``[rows, dim]``), their discounted count and the steps taken
    (``[rows]``)."""
    total = (model_err + naive_err).clamp_min(torch.finfo(model_err.dtype).tiny)
    share = torch.sigmoid(MIX_ETA * 2 * n.unsqueeze(1) * (naive_err - model_err) / total - MIX_BIAS)
    return share * (steps >= MIX_WARMUP).unsqueeze(1)


def update(
    model_err: Tensor, naive_err: Tensor, n: Tensor, model_miss: Tensor, naive_miss: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The discounted errors and count including one more miss of each (new tensors)."""
    return (
        MIX_RHO * model_err + model_miss.abs() ** MIX_POWER,
        MIX_RHO * naive_err + naive_miss.abs() ** MIX_POWER,
        MIX_RHO * n + 1,
    )
