"""Per-stream online standardisation for the first-order path (docs/trackin.md, "Scale-free first order").

A stream that learns by gradient steps (``mlp``, ``ar`` with hidden layers, the ``bce`` loss, SGD, Adam,
TrackIn with ``precondition: none``) sees its inputs and targets as z-scores against a running mean and
variance it keeps itself, so one learning rate fits returns of 1e-4, prices of 1e2 and pixels of 1e3. Its
predictions and losses come back in the user's units.

The statistics are a running mean and variance that become an exponentially weighted one after
``1 / ALPHA`` observations (weight ``max(1 / n, ALPHA)`` on the n-th value: debiased from the first value,
no zero start to forget). They are taken *including* the value they standardise, which bounds every z-score
by ``sqrt((1 - w) / w)`` (under 10): a 100-sigma jump is learned as a 10-sigma one. A value is standardised
by the statistics before it only where it is predicted (the target of a prediction is not known yet); the
output is served within ``BOUND`` standard deviations of the target's mean, and a step's residual is clipped
at ``CLIP`` standard deviations, so neither predictions nor steps can run away.

Every function works on gathered rows (``[rows, ...]``) and never syncs with the host. The keys live in the
pool's float buffer (:func:`entries`), so checkpoints and export/load carry them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trackin.models import keys
from trackin.models.specs import ARModel, StreamSpec, TrackModel, layer_sizes

__all__ = ["ALPHA", "BOUND", "CLIP", "FEATURE_CLIP", "Stats", "entries", "standardizes_target"]

ALPHA = 0.01
"""Weight of the newest value once a stream has seen ``1 / ALPHA`` values (about 100 observations)."""
BOUND = 10.0
"""The model's output is served within this many standard deviations of the target's running mean."""
CLIP = 3.0
"""A step's residual (output minus standardised target) is clipped at this many standard deviations."""
FEATURE_CLIP = 10.0
"""Standardised inputs beyond this are clipped (an ``ar`` lag standardised by statistics that have since
shrunk; a value standardised with itself included never gets there)."""


def standardizes_target(loss: str) -> bool:
    """Targets are standardised for regression losses; ``bce`` targets are labels in [0, 1]."""
    return loss != "bce"


def entries(spec: StreamSpec) -> list[tuple[str, tuple[int, ...]]]:
    """The statistics' keys and per-stream shapes (float buffer) of a first-order pool; none when the
    spec does not standardise. ``ar``: one mean and variance per dim (of the values, or of their changes for
    target ``delta``), for its inputs and its target alike."""
    model = spec.model
    assert not isinstance(model, TrackModel)
    if not spec.standardize:
        return []
    if isinstance(model, ARModel):
        return [(keys.NORM_X_MEAN, (model.dim,)), (keys.NORM_X_VAR, (model.dim,)), (keys.NORM_N, ())]
    sizes = layer_sizes(model)
    out = [(keys.NORM_X_MEAN, (sizes[0],)), (keys.NORM_X_VAR, (sizes[0],))]
    if standardizes_target(spec.loss):
        out += [(keys.NORM_Y_MEAN, (sizes[-1],)), (keys.NORM_Y_VAR, (sizes[-1],))]
    return [*out, (keys.NORM_N, ())]


INITIAL = {keys.NORM_X_VAR: 1.0, keys.NORM_Y_VAR: 1.0}
"""Initial values besides zero: a variance of 1, so a stream that has seen nothing uses raw units (the first
value then sets the mean and a variance of 0)."""


@dataclass(frozen=True, slots=True)
class Stats:
    """One running mean and variance per column, ``[rows, d]`` each, and the count ``[rows]``."""

    mean: Tensor
    var: Tensor
    n: Tensor

    def updated(self, values: Tensor) -> Stats:
        """The statistics including ``values`` ``[rows, d]`` (new tensors; the caller decides which rows
        keep them)."""
        n1 = self.n + 1
        w = n1.reciprocal().clamp_min(ALPHA).unsqueeze(1)
        d = values - self.mean
        mean = self.mean + w * d
        var = (1 - w) * (self.var + w * d.square())
        return Stats(mean, var, n1.clamp_max(1 / ALPHA))

    def std(self) -> Tensor:
        """``[rows, d]``: the standard deviation, positive (a constant series divides 0 by a tiny number)."""
        return (self.var + torch.finfo(self.var.dtype).tiny).sqrt()

    def z(self, values: Tensor, clip: float | None = None) -> Tensor:
        """``values`` ``[rows, d]`` (or ``[rows, lags, d]``: an ``ar`` window) as z-scores, optionally
        clipped at ``+- clip``."""
        mean, std = self.mean, self.std()
        if values.dim() == 3:
            mean, std = mean.unsqueeze(1), std.unsqueeze(1)
        out = (values - mean) / std
        return out if clip is None else out.clamp(-clip, clip)

    def served(self, output: Tensor) -> Tensor:
        """A standardised output in the user's units, within ``BOUND`` standard deviations of the mean."""
        return self.mean + self.std() * output.clamp(-BOUND, BOUND)

    def where(self, mask: Tensor, other: Stats) -> Stats:
        """Rows ``mask`` from ``self``, the others from ``other``."""
        m = mask.unsqueeze(1)
        return Stats(
            torch.where(m, self.mean, other.mean),
            torch.where(m, self.var, other.var),
            torch.where(mask, self.n, other.n),
        )


def learning_target(output: Tensor, z_target: Tensor) -> Tensor:
    """The target a step learns from: ``z_target``, but never more than ``CLIP`` from the output (the
    gradient of a squared or Huber loss then never exceeds that of a ``CLIP``-sigma miss)."""
    out = output.detach()
    return out + (z_target - out).clamp(-CLIP, CLIP)
