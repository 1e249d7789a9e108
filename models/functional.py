"""The optimizers' math, written once, on stacked tensors.

Every tensor handed to these functions has a leading *row* dimension that indexes independent models:
``params[i]`` has shape ``[rows, *shape_i]``. A single model (the ``torch.optim`` classes) is one row; the
batched engine passes one row per stream. Per-model scalars (hyperparameters, beta_t, norms) are either
Python numbers shared by all rows or tensors of shape ``[rows]``; group-wide reductions (gradient norm,
cosine) are taken per row over all of that row's tensors.

Each algorithm has a public entry point that picks one of two kernels with the same signature:
``_single_tensor_*`` (one op per tensor, any input) and ``_multi_tensor_*`` (``torch._foreach_*`` ops over the
tensor lists). Nothing here syncs with the host, so the same code runs on CUDA without stalls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BETA_RULES",
    "StepStats",
    "adam",
    "beta_rule_code",
    "row_sq_norm",
    "sgd",
    "trackin",
]

Scalar = float | Tensor
"""A Python number shared by every row, or a tensor of shape ``[rows]``."""

BETA_RULES = ("constant", "cos", "norm")
"""Rules for s_t; a rule's index is its code when rules vary per row (``beta_rule`` as an int tensor)."""

_TINY = 1e-30


@dataclass(frozen=True, slots=True)
class StepStats:
    """Per-row figures of one step, for monitoring; each a tensor of shape ``[rows]``."""

    grad_norm: Tensor
    beta: Tensor
    eps_norm: Tensor


def beta_rule_code(rule: str) -> int:
    """The integer code of a beta rule, for per-row rule tensors."""
    try:
        return BETA_RULES.index(rule)
    except ValueError:
        raise ValueError(f"Invalid beta_rule: {rule!r} (allowed: {', '.join(BETA_RULES)})") from None


def row_sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Squared L2 norm per row over all tensors: ``[rows]``."""
    total = tensors[0].flatten(1).square().sum(1)
    for t in tensors[1:]:
        total = total + t.flatten(1).square().sum(1)
    return total


def _row_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    total = (a[0].flatten(1) * b[0].flatten(1)).sum(1)
    for x, y in zip(a[1:], b[1:], strict=True):
        total = total + (x.flatten(1) * y.flatten(1)).sum(1)
    return total


def _bcast(value: Scalar, like: Tensor) -> Scalar:
    """Shape a per-row ``[rows]`` tensor to broadcast against ``like`` (``[rows, ...]``)."""
    if isinstance(value, Tensor) and value.dim() == 1:
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def _bcast_all(value: Scalar, likes: Sequence[Tensor]) -> Any:
    """Per-tensor scalars for ``torch._foreach_*`` (typed Any: its stubs know only number lists)."""
    return [_bcast(value, t) for t in likes]


def _as_row_tensor(value: Scalar, like: Tensor) -> Tensor:
    """A per-row tensor ``[rows]`` from a number or a per-row tensor."""
    if isinstance(value, Tensor):
        return value.to(like.dtype).expand(like.shape[0])
    return torch.full((like.shape[0],), value, dtype=like.dtype, device=like.device)


def _prepared_grads(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    weight_decay: Scalar,
    max_grad_norm: Scalar | None,
    maximize: bool,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Sign, weight decay and clipping, without touching ``grads``.

    Returns the effective gradients, their squared norm per row after clipping, and the norm before clipping
    (the figure reported to operators).
    """
    g = [-x if maximize else x for x in grads]
    if not (isinstance(weight_decay, float | int) and weight_decay == 0):
        g = [x + _bcast(weight_decay, x) * p for x, p in zip(g, params, strict=True)]
    sq = row_sq_norm(g)
    norm = sq.sqrt()
    if max_grad_norm is not None:
        scale = torch.clamp(_as_row_tensor(max_grad_norm, norm) / norm, max=1.0)
        g = [x * _bcast(scale, x) for x in g]
        sq = sq * scale.square()
    return g, sq, norm


def _momentum_scale(
    g: Sequence[Tensor],
    g_sq: Tensor,
    momenta: Sequence[Tensor],
    sq_avg: Tensor,
    step: Tensor,
    *,
    gamma: Scalar,
    beta: Scalar,
    beta_rule: str | Tensor,
    debias: bool | Tensor,
) -> tuple[Tensor, Tensor]:
    """Update the momenta (in place) and ``sq_avg``; return beta_t and the debias divisor, both ``[rows]``.

    ``momenta`` hold m_{t-1} on entry and m_t on return; ``step`` must already hold t.
    """
    gamma_r = _as_row_tensor(gamma, g_sq)
    # One rule for every row (the common case): compute only its s_t.
    needs = {beta_rule} if isinstance(beta_rule, str) else {"cos", "norm"}
    if "cos" in needs:
        m_prev_sq = row_sq_norm(momenta)
        s_cos = (_row_dot(g, momenta) / (g_sq * m_prev_sq).sqrt().clamp_min(_TINY)).clamp_min(0.0)
    for m, x in zip(momenta, g, strict=True):
        m.mul_(_bcast(gamma_r, m)).add_(x * _bcast(1 - gamma_r, x))
    sq_avg.mul_(gamma_r).add_((1 - gamma_r) * g_sq)

    bias = 1 - torch.pow(gamma_r, step.to(g_sq.dtype))
    if isinstance(debias, Tensor):
        bias = torch.where(debias, bias, torch.ones_like(bias))
    elif not debias:
        bias = torch.ones_like(bias)

    if "norm" in needs:
        rho = (row_sq_norm(momenta) / bias.square()) / (sq_avg / bias).clamp_min(_TINY)
        kappa = (1 - gamma_r) / (1 + gamma_r)
        s_norm = ((rho - kappa) / (1 - kappa).clamp_min(_TINY)).clamp(0.0, 1.0)
        # gamma = 0: kappa = rho = 1, no signal-to-noise estimate (0 / 0); s = 0 rather than rounding noise
        s_norm = torch.where(kappa < 1, s_norm, torch.zeros_like(s_norm))
    beta_r = _as_row_tensor(beta, g_sq)
    if isinstance(beta_rule, Tensor):
        s = torch.where(beta_rule == 0, torch.ones_like(s_cos), torch.where(beta_rule == 1, s_cos, s_norm))
        return beta_r * s, bias
    if beta_rule == "constant":
        return beta_r.clone(), bias
    return beta_r * (s_cos if beta_rule == "cos" else s_norm), bias


def trackin(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    eps: Sequence[Tensor] | None,
    sq_avg: Tensor,
    step: Tensor,
    *,
    lr: Scalar,
    gamma: Scalar,
    beta: Scalar,
    beta_rule: str | Tensor,
    debias: bool | Tensor,
    eta: Scalar,
    eps_decay: Scalar,
    weight_decay: Scalar = 0.0,
    max_grad_norm: Scalar | None = None,
    maximize: bool = False,
    foreach: bool | None = None,
) -> StepStats:
    """One TrackIn step on stacked models, in place on ``params``, ``momenta``, ``eps``, ``sq_avg``, ``step``.

    Shapes: ``params``, ``grads``, ``momenta``, ``eps``: each ``[rows, *shape]``; ``sq_avg``, ``step``:
    ``[rows]``. ``eps`` is None when the error correction is off (eta = 0). The update (docs/trackin.md)::

        g <- g + wd * theta;  g <- g * min(1, max_norm / ||g||)
        eps_t = eps_decay * eps_{t-1} - eta * g
        beta_t = beta * s_t                       (rule: constant | cos | norm)
        m_t = gamma * m_{t-1} + (1 - gamma) * g;  mhat_t = m_t / (1 - gamma^t) if debias
        theta <- theta - lr * (g + beta_t * mhat_t) + eps_t
    """
    if foreach is None:
        foreach = all(p.device.type != "cpu" for p in params)
    kernel = _multi_tensor_trackin if foreach else _single_tensor_trackin
    g, g_sq, grad_norm = _prepared_grads(
        params, grads, weight_decay=weight_decay, max_grad_norm=max_grad_norm, maximize=maximize
    )
    step.add_(1)
    beta_t, bias = _momentum_scale(
        g,
        g_sq,
        momenta,
        sq_avg,
        step,
        gamma=gamma,
        beta=beta,
        beta_rule=beta_rule,
        debias=debias,
    )
    kernel(params, g, momenta, eps, lr=lr, momentum_coef=beta_t / bias, eta=eta, eps_decay=eps_decay)
    eps_norm = row_sq_norm(eps).sqrt() if eps is not None else torch.zeros_like(grad_norm)
    return StepStats(grad_norm=grad_norm, beta=beta_t, eps_norm=eps_norm)


def _single_tensor_trackin(
    params: Sequence[Tensor],
    g: Sequence[Tensor],
    momenta: Sequence[Tensor],
    eps: Sequence[Tensor] | None,
    *,
    lr: Scalar,
    momentum_coef: Tensor,
    eta: Scalar,
    eps_decay: Scalar,
) -> None:
    for i, (p, x, m) in enumerate(zip(params, g, momenta, strict=True)):
        lr_b = _bcast(lr, p)
        p.sub_(lr_b * (x + _bcast(momentum_coef, m) * m))
        if eps is not None:
            e = eps[i]
            e.mul_(_bcast(eps_decay, e)).sub_(_bcast(eta, e) * x)
            p.add_(e)


def _multi_tensor_trackin(
    params: Sequence[Tensor],
    g: Sequence[Tensor],
    momenta: Sequence[Tensor],
    eps: Sequence[Tensor] | None,
    *,
    lr: Scalar,
    momentum_coef: Tensor,
    eta: Scalar,
    eps_decay: Scalar,
) -> None:
    direction = torch._foreach_mul(list(momenta), _bcast_all(momentum_coef, momenta))
    torch._foreach_add_(direction, list(g))
    torch._foreach_mul_(direction, _bcast_all(lr, params))
    torch._foreach_sub_(list(params), direction)
    if eps is not None:
        torch._foreach_mul_(list(eps), _bcast_all(eps_decay, eps))
        torch._foreach_sub_(list(eps), list(torch._foreach_mul(list(g), _bcast_all(eta, g))))
        torch._foreach_add_(list(params), list(eps))


def sgd(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor] | None,
    step: Tensor,
    *,
    lr: Scalar,
    momentum: Scalar,
    dampening: Scalar,
    debias: bool | Tensor,
    weight_decay: Scalar = 0.0,
    max_grad_norm: Scalar | None = None,
    maximize: bool = False,
) -> StepStats:
    """SGD with momentum and dampening, optionally debiased: ``m_t = mu m + (1 - d) g``, ``theta -= lr m_t /
    (1 - mu^t)``. Momenta start at zero (unlike torch.optim.SGD, whose first step sets m = g), so with
    ``dampening = momentum`` and ``debias`` the momentum is an unbiased EWMA of the gradients.
    ``momenta`` is None for plain SGD."""
    g, _, grad_norm = _prepared_grads(
        params, grads, weight_decay=weight_decay, max_grad_norm=max_grad_norm, maximize=maximize
    )
    step.add_(1)
    if momenta is None:
        for p, x in zip(params, g, strict=True):
            p.sub_(_bcast(lr, p) * x)
        zero = torch.zeros_like(grad_norm)
        return StepStats(grad_norm=grad_norm, beta=zero, eps_norm=zero)
    mu = _as_row_tensor(momentum, grad_norm)
    bias = 1 - torch.pow(mu, step.to(grad_norm.dtype))
    if isinstance(debias, Tensor):
        bias = torch.where(debias, bias, torch.ones_like(bias))
    elif not debias:
        bias = torch.ones_like(bias)
    keep = 1 - _as_row_tensor(dampening, grad_norm)
    for p, x, m in zip(params, g, momenta, strict=True):
        m.mul_(_bcast(mu, m)).add_(x * _bcast(keep, x))
        p.sub_(_bcast(lr, p) * m / _bcast(bias, m))
    return StepStats(grad_norm=grad_norm, beta=mu, eps_norm=torch.zeros_like(grad_norm))


def adam(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    step: Tensor,
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar = 0.0,
    max_grad_norm: Scalar | None = None,
    maximize: bool = False,
) -> StepStats:
    """Adam (L2 weight decay, as torch.optim.Adam) with bias correction."""
    g, _, grad_norm = _prepared_grads(
        params, grads, weight_decay=weight_decay, max_grad_norm=max_grad_norm, maximize=maximize
    )
    step.add_(1)
    b1 = _as_row_tensor(beta1, grad_norm)
    b2 = _as_row_tensor(beta2, grad_norm)
    t = step.to(grad_norm.dtype)
    bias1 = 1 - torch.pow(b1, t)
    bias2_sqrt = (1 - torch.pow(b2, t)).sqrt()
    for p, x, m, v in zip(params, g, exp_avgs, exp_avg_sqs, strict=True):
        m.mul_(_bcast(b1, m)).add_(x * _bcast(1 - b1, x))
        v.mul_(_bcast(b2, v)).add_(x.square() * _bcast(1 - b2, x))
        denom = v.sqrt() / _bcast(bias2_sqrt, v) + _bcast(eps, v)
        p.sub_(_bcast(lr, p) / _bcast(bias1, p) * m / denom)
    zero = torch.zeros_like(grad_norm)
    return StepStats(grad_norm=grad_norm, beta=b1, eps_norm=zero)
