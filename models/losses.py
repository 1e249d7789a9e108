"""Each loss beside its gradient, and the prediction a client sees.

Losses are averaged over output dimensions, one value per row, so a batch of independent models sums them
into one scalar whose gradient is each model's own gradient. ``gradient`` is that gradient with respect to
the output, in closed form: the pool uses it for single-layer models (``dL/dout * [x, 1]``, no autograd),
while deeper models and the per-stream reference differentiate the value with autograd; the tests hold the
two to each other. ``bce`` models output a logit; clients get the probability.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "LOSSES",
    "BinaryCrossEntropy",
    "Huber",
    "Loss",
    "LossName",
    "Squared",
    "get",
    "loss_per_row",
    "prediction",
]

LossName = Literal["mse", "huber", "bce"]

Delta = float | Tensor
"""Huber's threshold: one number, or one per row ``[rows]``."""


class Loss:
    """A per-row loss: ``[rows, out]`` outputs and targets -> ``[rows]`` values."""

    name: LossName

    def __call__(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        raise NotImplementedError

    def gradient(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        """d loss / d output, ``[rows, out]``."""
        raise NotImplementedError

    def prediction(self, output: Tensor) -> Tensor:
        """What the client is told the model predicts."""
        return output


class Squared(Loss):
    """``mean((output - target)^2)``."""

    name = "mse"

    def __call__(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        return (output - target).square().mean(-1)

    def gradient(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        return (output - target) * (2 / output.shape[-1])


class Huber(Loss):
    """Squared within ``delta`` of the target, linear beyond: ``0.5 r^2`` or ``delta (|r| - 0.5 delta)``."""

    name = "huber"

    def __call__(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        d = delta.unsqueeze(-1) if isinstance(delta, Tensor) and delta.dim() == 1 else delta
        r = (output - target).abs()
        return torch.where(r <= d, 0.5 * r.square(), d * (r - 0.5 * d)).mean(-1)

    def gradient(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        r = output - target  # the residual inside [-d, d], d * sign(r) outside
        if isinstance(delta, Tensor):
            clipped = r.clamp(-delta.unsqueeze(-1), delta.unsqueeze(-1))
        else:
            clipped = r.clamp(-delta, delta)
        scale = 1.0 / output.shape[-1]
        return clipped * scale if scale != 1.0 else clipped


class BinaryCrossEntropy(Loss):
    """Cross-entropy of a logit against a target in [0, 1]; the client gets the probability."""

    name = "bce"

    def __call__(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, target, reduction="none").mean(-1)

    def gradient(self, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
        return (torch.sigmoid(output) - target) * (1.0 / output.shape[-1])

    def prediction(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output)


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (Squared(), Huber(), BinaryCrossEntropy())}
assert tuple(LOSSES) == get_args(LossName)


def get(kind: LossName) -> Loss:
    """The loss named in a spec."""
    try:
        return LOSSES[kind]
    except KeyError:
        raise ValueError(f"Invalid loss: {kind!r} (allowed: {', '.join(LOSSES)})") from None


def loss_per_row(kind: LossName, output: Tensor, target: Tensor, delta: Delta = 1.0) -> Tensor:
    """``[rows, out]`` outputs and targets -> ``[rows]`` losses. ``delta`` (huber) may be per row."""
    return get(kind)(output, target, delta)


def prediction(kind: LossName, output: Tensor) -> Tensor:
    """What the client is told the model predicts: the probability for ``bce``, the output otherwise."""
    return get(kind).prediction(output)
