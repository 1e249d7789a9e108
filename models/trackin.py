"""TrackIn: a ``torch.optim.Optimizer`` for tracking non-stationary targets online.

The math lives in :func:`models.functional.trackin`; this class validates hyperparameters, keeps state per
parameter and calls the functional core with each group as one row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from trackin.models import functional as F
from trackin.models.specs import TRACKIN_DEFAULTS

__all__ = ["TrackIn", "validate_trackin"]


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


def validate_trackin(
    *,
    lr: float,
    gamma: float,
    beta: float,
    beta_rule: str,
    eta: float,
    eps_decay: float,
    weight_decay: float,
    max_grad_norm: float | None,
) -> None:
    """Raise ``ValueError`` naming the first argument outside its allowed range."""
    _check("lr", lr, lr > 0, "lr > 0")
    _check("gamma", gamma, 0 <= gamma < 1, "0 <= gamma < 1")
    _check("beta", beta, beta >= 0, "beta >= 0")
    F.beta_rule_code(beta_rule)
    _check("eta", eta, eta >= 0, "eta >= 0")
    _check("eps_decay", eps_decay, 0 <= eps_decay <= 1, "0 <= eps_decay <= 1")
    _check("weight_decay", weight_decay, weight_decay >= 0, "weight_decay >= 0")
    if max_grad_norm is not None:
        _check("max_grad_norm", max_grad_norm, max_grad_norm > 0, "max_grad_norm > 0 or None")


class TrackIn(Optimizer):
    r"""Gradient step plus momentum scaled by a per-group agreement signal, plus learned error correction.

    For each parameter group, at step :math:`t` with gradient :math:`g_t` over all the group's tensors:

    .. math::
        \epsilon_t &= \lambda \epsilon_{t-1} - \eta g_t \\
        m_t &= \gamma m_{t-1} + (1 - \gamma) g_t, \qquad \hat m_t = m_t / (1 - \gamma^t) \\
        \theta_{t+1} &= \theta_t - \text{lr}\,(g_t + \beta s_t \hat m_t) + \epsilon_t

    with :math:`s_t \in [0, 1]` from ``beta_rule``: ``cos`` (agreement of :math:`g_t` with
    :math:`m_{t-1}`), ``norm`` (signal-to-noise of the momentum) or ``constant`` (1: quasi-hyperbolic
    momentum). ``weight_decay`` and ``max_grad_norm`` act on :math:`g_t` first.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (> 0).
        gamma: momentum EWMA factor, in [0, 1).
        beta: momentum weight (>= 0), scaled by s_t.
        beta_rule: ``"cos"``, ``"norm"`` or ``"constant"``.
        debias: divide the momentum by 1 - gamma^t.
        eta: learning rate of the error correction eps (0 turns it off and keeps no eps state).
        eps_decay: leak of eps per step, in [0, 1].
        weight_decay: L2 penalty added to the gradient.
        max_grad_norm: clip the group's gradient to this norm (None: no clipping).
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach`` kernel (None: on accelerators).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = TrackIn(model.parameters(), lr=0.05)
        >>> loss = model(torch.ones(4)).square().sum()
        >>> loss.backward(); opt.step(); opt.zero_grad()

    Note:
        The group's step count t, the gradient-norm EWMA of the ``norm`` rule and the last beta_t are kept in
        every parameter's state (identical within a group), as tensors, so ``step()`` never syncs with the
        host. See docs/trackin.md for the derivation and how the defaults were chosen.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = TRACKIN_DEFAULTS.lr,
        gamma: float = TRACKIN_DEFAULTS.gamma,
        beta: float = TRACKIN_DEFAULTS.beta,
        beta_rule: str = TRACKIN_DEFAULTS.beta_rule,
        debias: bool = True,
        eta: float = TRACKIN_DEFAULTS.eta,
        eps_decay: float = TRACKIN_DEFAULTS.eps_decay,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        validate_trackin(
            lr=lr,
            gamma=gamma,
            beta=beta,
            beta_rule=beta_rule,
            eta=eta,
            eps_decay=eps_decay,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
        )
        defaults = {
            "lr": lr,
            "gamma": gamma,
            "beta": beta,
            "beta_rule": beta_rule,
            "debias": debias,
            "eta": eta,
            "eps_decay": eps_decay,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group's own hyperparameters before accepting it."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_trackin(
            **{
                k: group[k]
                for k in (
                    "lr",
                    "gamma",
                    "beta",
                    "beta_rule",
                    "eta",
                    "eps_decay",
                    "weight_decay",
                    "max_grad_norm",
                )
            }
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("max_grad_norm", None)

    def _group_state(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        momenta: list[Tensor] = []
        eps: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("TrackIn does not support sparse gradients")
            state = self.state[p]
            if not state:
                # t, the norm EWMA and beta_t belong to the group: a late parameter joins at its values
                group_state = next((self.state[q] for q in group["params"] if self.state.get(q)), None)
                for key, dtype in (("step", torch.int64), ("sq_avg", p.dtype), ("beta_t", p.dtype)):
                    state[key] = (
                        group_state[key].clone()
                        if group_state is not None
                        else torch.zeros((), dtype=dtype, device=p.device)
                    )
                state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["eta"] > 0 and "eps" not in state:
                state["eps"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p.unsqueeze(0))
            grads.append(p.grad.unsqueeze(0))
            momenta.append(state["momentum"].unsqueeze(0))
            if group["eta"] > 0:
                eps.append(state["eps"].unsqueeze(0))
        return params, grads, momenta, eps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One TrackIn step per group; ``closure`` re-evaluates the loss (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, momenta, eps = self._group_state(group)
            if not params:
                continue
            first = self.state[next(p for p in group["params"] if p.grad is not None)]
            step = first["step"].view(1).clone()
            sq_avg = first["sq_avg"].view(1).clone()
            stats = F.trackin(
                params,
                grads,
                momenta,
                eps if group["eta"] > 0 else None,
                sq_avg,
                step,
                lr=group["lr"],
                gamma=group["gamma"],
                beta=group["beta"],
                beta_rule=group["beta_rule"],
                debias=group["debias"],
                eta=group["eta"],
                eps_decay=group["eps_decay"],
                weight_decay=group["weight_decay"],
                max_grad_norm=group["max_grad_norm"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state["step"].copy_(step[0])
                state["sq_avg"].copy_(sq_avg[0])
                state["beta_t"].copy_(stats.beta[0])
        return loss
