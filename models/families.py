"""Model families as pure functions of a parameter dict, so torch.func and the batched engine can use them.

Every family is a stack of affine layers (``weight{i}`` ``[out, in]``, ``bias{i}`` ``[out]``) with one
activation between layers: ``linear`` is one layer, ``mlp`` several, and ``ar`` a stack over a window of
past observations. ``forward`` works on one model's parameters; ``stacked_forward`` on parameters with a
leading stream dimension, one input row per stream.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from trackin.models.specs import ARModel, LinearModel, MLPModel, layer_sizes

__all__ = [
    "ARModel",
    "FamilyModule",
    "FlatModel",
    "ar_features",
    "forward",
    "init_params",
    "param_shapes",
    "stacked_forward",
]

Model = LinearModel | MLPModel | ARModel

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": torch.nn.functional.gelu,
    "sigmoid": torch.sigmoid,
}


def _activation(model: Model) -> Callable[[Tensor], Tensor]:
    return _ACTIVATIONS[getattr(model, "activation", "tanh")]


def param_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, in a fixed order (weights then bias per layer)."""
    sizes = layer_sizes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"weight{i}"] = (fan_out, fan_in)
        shapes[f"bias{i}"] = (fan_out,)
    return shapes


def init_params(
    model: Model, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Initial parameters: zeros, or uniform(+-1/sqrt(fan_in)) from the spec's seed (as nn.Linear does).

    Random draws happen on the CPU with a private generator, so a seed gives the same model on every device.
    """
    shapes = param_shapes(model)
    if model.init == "zeros":
        return {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in shapes.items()}
    generator = torch.Generator().manual_seed(model.seed)
    params = {}
    for name, shape in shapes.items():
        fan_in = shapes["weight" + name.removeprefix("weight").removeprefix("bias")][1]
        bound = 1.0 / math.sqrt(fan_in)
        draw = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 * bound - bound
        params[name] = draw.to(dtype=dtype, device=device)
    return params


def forward(model: Model, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """One model's output for ``x``: ``[..., in] -> [..., out]``. Pure: usable with torch.func."""
    return _layers(model, params, x, lambda h, w, b: h @ w.mT + b)


def stacked_forward(model: Model, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Outputs of many models at once: params ``[rows, *shape]``, ``x`` ``[rows, in]`` -> ``[rows, out]``."""
    return _layers(
        model, params, x, lambda h, w, b: torch.baddbmm(b.unsqueeze(1), h.unsqueeze(1), w.mT).squeeze(1)
    )


def _layers(
    model: Model, params: Mapping[str, Tensor], x: Tensor, affine: Callable[[Tensor, Tensor, Tensor], Tensor]
) -> Tensor:
    """The stack of affine layers (``affine(h, weight, bias)``) with the activation between them."""
    act = _activation(model)
    n_layers = len(layer_sizes(model)) - 1
    h = x
    for i in range(n_layers):
        h = affine(h, params[f"weight{i}"], params[f"bias{i}"])
        if i < n_layers - 1:
            h = act(h)
    return h


def ar_features(model: ARModel, window: Tensor) -> Tensor:
    """Inputs of an ``ar`` model from its lag window ``[..., model.window, dim]`` (oldest first).

    Levels are used as they are; for target ``delta`` the features are the ``lags`` successive changes.
    """
    if model.target == "delta":
        window = window[..., 1:, :] - window[..., :-1, :]
    return window.flatten(-2)


class FlatModel:
    """A family's forward on flat parameter rows ``theta: [rows, n_params]`` (a slice of a pool's packed
    buffer), parameters in ``param_shapes`` order.

    Single-layer models (``linear``, ``ar`` without hidden layers) are ``closed_form``: their output is an
    affine map of ``[x, 1]`` and their gradient ``dL/dout * [x, 1]``, so they need no autograd.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.shapes = param_shapes(model)
        self.n_params = sum(math.prod(s) for s in self.shapes.values())
        sizes = layer_sizes(model)
        self.out_dim = sizes[-1]
        self.closed_form = len(sizes) == 2

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        """Named parameter views ``[rows, *shape]`` of ``theta``."""
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            out[name] = theta[:, start : start + size].view(theta.shape[0], *shape)
            start += size
        return out

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """Outputs ``[rows, out]`` for inputs ``x: [rows, in]``."""
        if self.closed_form:
            return self.affine(theta, x)
        return stacked_forward(self.model, self.params(theta), x)

    def affine(self, theta: Tensor, x: Tensor) -> Tensor:
        """``stacked_forward`` of a single-layer model, without its per-call Python (one output: a row dot
        product with ``[x, 1]``)."""
        n, out = theta.shape[0], self.out_dim
        if out == 1:
            return (theta * torch.cat([x, x.new_ones(n, 1)], 1)).sum(1, keepdim=True)
        weight = theta[:, : out * x.shape[1]].view(n, out, x.shape[1])
        bias = theta[:, out * x.shape[1] :]
        return torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(1), weight.mT).squeeze(1)

    def ar_level(self, theta: Tensor, window: Tensor) -> Tensor:
        """An ``ar`` model's forecast of the next level from a full window ``[rows, window, dim]``."""
        assert isinstance(self.model, ARModel)
        out = self(theta, ar_features(self.model, window))
        return out + window[:, -1] if self.model.target == "delta" else out


class FamilyModule(nn.Module):
    """An ordinary ``nn.Module`` around a family's pure forward (the per-stream reference model)."""

    def __init__(
        self, model: Model, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        self.spec = model
        self.params = nn.ParameterDict(
            {k: nn.Parameter(v) for k, v in init_params(model, dtype, device).items()}
        )

    def forward(self, x: Tensor) -> Tensor:
        return forward(self.spec, dict(self.params.items()), x)
