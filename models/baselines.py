"""Baseline optimizers a stream may pick instead of TrackIn: debiased SGD with momentum, and Adam.

Like :class:`models.trackin.TrackIn`, these classes only validate, keep state per parameter and call the
functional core (:func:`models.functional.sgd`, :func:`models.functional.adam`) with each parameter group as
one row, so they are exact per-stream references for the batched engine. Their keyword arguments are the
fields of :class:`models.specs.SGDSpec` and :class:`models.specs.AdamSpec` (``name`` aside), and their
defaults come from those specs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from trackin.models import functional as F
from trackin.models.specs import AdamSpec, SGDSpec

__all__ = ["AdamBaseline", "DebiasedSGD", "validate_adam", "validate_sgd"]

_SGD = SGDSpec()
_ADAM = AdamSpec()


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


def _check_common(lr: float, weight_decay: float, max_grad_norm: float | None) -> None:
    _check("lr", lr, lr > 0, "lr > 0")
    _check("weight_decay", weight_decay, weight_decay >= 0, "weight_decay >= 0")
    if max_grad_norm is not None:
        _check("max_grad_norm", max_grad_norm, max_grad_norm > 0, "max_grad_norm > 0 or None")


def validate_sgd(
    *, lr: float, momentum: float, dampening: float, weight_decay: float, max_grad_norm: float | None
) -> None:
    """Raise ``ValueError`` naming the first argument outside its allowed range."""
    _check_common(lr, weight_decay, max_grad_norm)
    _check("momentum", momentum, 0 <= momentum < 1, "0 <= momentum < 1")
    _check("dampening", dampening, 0 <= dampening <= 1, "0 <= dampening <= 1")


def validate_adam(
    *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, max_grad_norm: float | None
) -> None:
    """Raise ``ValueError`` naming the first argument outside its allowed range."""
    _check_common(lr, weight_decay, max_grad_norm)
    _check("beta1", beta1, 0 <= beta1 < 1, "0 <= beta1 < 1")
    _check("beta2", beta2, 0 <= beta2 < 1, "0 <= beta2 < 1")
    _check("eps", eps, eps > 0, "eps > 0")


class _RowOptimizer(Optimizer):
    """Shared frame: each group is one row of the functional core; the step count is a tensor per param.

    Subclasses validate a group (``_validate_group``), name its per-parameter buffers (``_buffers``) and run
    the core on it (``_row_step``).
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group's own hyperparameters before accepting it."""
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    def _validate_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("max_grad_norm", None)

    def _buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _row_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], buffers: list[list[Tensor]]
    ) -> Tensor:
        """Run the functional core on one row; return the row's step count ``[1]`` after the step."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step per group; ``closure`` re-evaluates the loss (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            names = self._buffers(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[list[Tensor]] = [[] for _ in names]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # t belongs to the group (one row): a late parameter joins at the group's count
                    group_state = next((self.state[q] for q in group["params"] if self.state.get(q)), None)
                    state["step"] = (
                        group_state["step"].clone()
                        if group_state is not None
                        else torch.zeros((), dtype=torch.int64, device=p.device)
                    )
                for name, column in zip(names, buffers, strict=True):
                    if name not in state:
                        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    column.append(state[name].unsqueeze(0))
                params.append(p.unsqueeze(0))
                grads.append(p.grad.unsqueeze(0))
            if not params:
                continue
            step = self._row_step(group, params, grads, buffers)
            for p in group["params"]:
                if self.state.get(p):
                    self.state[p]["step"].copy_(step[0])
        return loss

    def _group_step(self, group: dict[str, Any]) -> Tensor:
        """The group's step count as a ``[1]`` tensor (a copy), from its first parameter with a gradient."""
        first = next(p for p in group["params"] if p.grad is not None)
        step: Tensor = self.state[first]["step"]
        return step.view(1).clone()


class DebiasedSGD(_RowOptimizer):
    r"""SGD with momentum, dampening and an optional debiased momentum.

    For each parameter group, at step :math:`t` with gradient :math:`g_t` (after weight decay and clipping
    of the group's norm, as in TrackIn):

    .. math::
        m_t &= \mu m_{t-1} + (1 - d) g_t, \qquad m_0 = 0 \\
        \theta_{t+1} &= \theta_t - \text{lr}\, m_t / (1 - \mu^t) \quad (\text{or } m_t \text{ without debias})

    With ``momentum = 0`` the group keeps no momentum and takes plain SGD steps (``dampening`` is ignored).
    With ``dampening = momentum`` and ``debias`` the step follows an unbiased EWMA of the gradients.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (> 0).
        momentum: momentum factor, in [0, 1).
        dampening: dampening of the gradient entering the momentum, in [0, 1].
        debias: divide the momentum by 1 - momentum^t.
        weight_decay: L2 penalty added to the gradient.
        max_grad_norm: clip the group's gradient to this norm (None: no clipping).
        maximize: ascend instead of descend.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = DebiasedSGD(model.parameters(), lr=0.05, momentum=0.9, dampening=0.9, debias=True)
        >>> loss = model(torch.ones(4)).square().sum()
        >>> loss.backward(); opt.step(); opt.zero_grad()

    Note:
        Unlike ``torch.optim.SGD``, whose first step sets :math:`m_1 = g_1`, the momentum starts at zero, so
        the two agree only with ``dampening = 0`` and no debias. Nesterov momentum is not offered.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = _SGD.lr,
        momentum: float = _SGD.momentum,
        dampening: float = _SGD.dampening,
        debias: bool = _SGD.debias,
        weight_decay: float = _SGD.weight_decay,
        max_grad_norm: float | None = _SGD.max_grad_norm,
        maximize: bool = False,
    ) -> None:
        validate_sgd(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
        )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "debias": debias,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        validate_sgd(
            **{k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "max_grad_norm")}
        )

    def _buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] > 0 else ()

    def _row_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], buffers: list[list[Tensor]]
    ) -> Tensor:
        step = self._group_step(group)
        F.sgd(
            params,
            grads,
            buffers[0] if buffers else None,
            step,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            debias=group["debias"],
            weight_decay=group["weight_decay"],
            max_grad_norm=group["max_grad_norm"],
            maximize=group["maximize"],
        )
        return step


class AdamBaseline(_RowOptimizer):
    r"""Adam with bias correction and L2 weight decay (as ``torch.optim.Adam``), plus group-norm clipping.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_{t+1} &= \theta_t - \frac{\text{lr}}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Args:
        params: parameters or parameter groups.
        lr: learning rate (> 0).
        beta1: first-moment EWMA factor, in [0, 1).
        beta2: second-moment EWMA factor, in [0, 1).
        eps: added to the denominator (> 0).
        weight_decay: L2 penalty added to the gradient (not decoupled).
        max_grad_norm: clip the group's gradient to this norm (None: no clipping).
        maximize: ascend instead of descend.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdamBaseline(model.parameters(), lr=1e-2)
        >>> loss = model(torch.ones(4)).square().sum()
        >>> loss.backward(); opt.step(); opt.zero_grad()

    Note:
        Without ``max_grad_norm`` this is ``torch.optim.Adam`` (no amsgrad); the betas are two arguments, as
        in :class:`models.specs.AdamSpec`, rather than a tuple.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = _ADAM.lr,
        beta1: float = _ADAM.beta1,
        beta2: float = _ADAM.beta2,
        eps: float = _ADAM.eps,
        weight_decay: float = _ADAM.weight_decay,
        max_grad_norm: float | None = _ADAM.max_grad_norm,
        maximize: bool = False,
    ) -> None:
        validate_adam(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm
        )
        defaults = {
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        validate_adam(
            **{k: group[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm")}
        )

    def _buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _row_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], buffers: list[list[Tensor]]
    ) -> Tensor:
        step = self._group_step(group)
        F.adam(
            params,
            grads,
            buffers[0],
            buffers[1],
            step,
            lr=group["lr"],
            beta1=group["beta1"],
            beta2=group["beta2"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            max_grad_norm=group["max_grad_norm"],
            maximize=group["maximize"],
        )
        return step
