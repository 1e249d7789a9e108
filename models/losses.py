"""Per-row losses and the prediction a client sees, for every family.

Losses are averaged over output dimensions, one value per row, so a batch of independent models sums them
into one scalar whose gradient is each model's own gradient. ``bce`` models output a logit; clients get the
probability.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["LossName", "loss_per_row", "prediction"]

LossName = Literal["mse", "huber", "bce"]


def loss_per_row(kind: LossName, output: Tensor, target: Tensor, delta: float | Tensor = 1.0) -> Tensor:
    """``[rows, out]`` outputs and targets -> ``[rows]`` losses. ``delta`` (huber) may be per row."""
    if kind == "mse":
        return (output - target).square().mean(-1)
    if kind == "huber":
        d = delta.unsqueeze(-1) if isinstance(delta, Tensor) and delta.dim() == 1 else delta
        r = (output - target).abs()
        return torch.where(r <= d, 0.5 * r.square(), d * (r - 0.5 * d)).mean(-1)
    if kind == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(output, target, reduction="none").mean(-1)
    raise ValueError(f"Invalid loss: {kind!r} (allowed: mse, huber, bce)")


def prediction(kind: LossName, output: Tensor) -> Tensor:
    """What the client is told the model predicts: the probability for ``bce``, the output otherwise."""
    return torch.sigmoid(output) if kind == "bce" else output
