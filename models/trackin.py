"""TrackIn: a ``torch.optim.Optimizer`` for tracking non-stationary targets online.

The math lives in :func:`models.functional.trackin`; this class takes its hyperparameters' defaults and
bounds from :data:`models.hyper.TRACKIN`, keeps state per parameter and calls the functional core with each
group as one row (:class:`models.row_optimizer.RowOptimizer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from trackin.models import functional as F
from trackin.models.hyper import TRACKIN
from trackin.models.row_optimizer import Row, RowOptimizer

__all__ = ["TrackIn"]

_D = TRACKIN.defaults


class TrackIn(RowOptimizer):
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
        lr: learning rate, in (0, 1000].
        gamma: momentum EWMA factor, in [0, 1).
        beta: momentum weight, in [0, 1000], scaled by s_t.
        beta_rule: ``"cos"``, ``"norm"`` or ``"constant"``.
        debias: divide the momentum by 1 - gamma^t.
        eta: learning rate of the error correction eps, in [0, 1000] (0 turns it off and keeps no eps state).
        eps_decay: leak of eps per step, in [0, 1].
        weight_decay: L2 penalty added to the gradient (>= 0).
        max_grad_norm: clip the group's gradient to this norm (> 0; None: no clipping).
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

    hyper = TRACKIN
    options: ClassVar[Mapping[str, Any]] = {"maximize": False, "foreach": None}
    row_state = (*TRACKIN.row_state, "beta_t")  # the engine keeps beta_t among the figures

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = _D["lr"],
        gamma: float = _D["gamma"],
        beta: float = _D["beta"],
        beta_rule: str = _D["beta_rule"],
        debias: bool = _D["debias"],
        eta: float = _D["eta"],
        eps_decay: float = _D["eps_decay"],
        weight_decay: float = _D["weight_decay"],
        max_grad_norm: float | None = _D["max_grad_norm"],
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, locals())

    def _row_step(self, row: Row, hyper: dict[str, Any]) -> None:
        momenta, eps = row.buffers["momentum"], row.buffers.get("eps")
        stats = F.trackin(
            row.params, row.grads, momenta, eps, row.scalars["sq_avg"], row.scalars["step"], **hyper
        )
        row.scalars["beta_t"].copy_(stats.beta)
