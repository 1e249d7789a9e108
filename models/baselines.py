"""Baseline optimizers a stream may pick instead of TrackIn: debiased SGD with momentum, and Adam.

Like :class:`models.trackin.TrackIn`, these classes only validate, keep state per parameter and call the
functional core (:func:`models.functional.sgd`, :func:`models.functional.adam`) with each parameter group as
one row (:class:`models.row_optimizer.RowOptimizer`), so they are exact per-stream references for the batched
engine. Their hyperparameters, defaults and bounds are declared in :mod:`models.hyper` (``SGD``, ``ADAM``),
like the fields of :class:`models.specs.SGDSpec` and :class:`models.specs.AdamSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from trackin.models import functional as F
from trackin.models.hyper import ADAM, SGD
from trackin.models.row_optimizer import Row, RowOptimizer

__all__ = ["AdamBaseline", "DebiasedSGD"]

_SGD = SGD.defaults
_ADAM = ADAM.defaults


class DebiasedSGD(RowOptimizer):
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
        lr: learning rate, in (0, 1000].
        momentum: momentum factor, in [0, 1).
        dampening: dampening of the gradient entering the momentum, in [0, 1].
        debias: divide the momentum by 1 - momentum^t.
        weight_decay: L2 penalty added to the gradient (>= 0).
        max_grad_norm: clip the group's gradient to this norm (> 0; None: no clipping).
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

    hyper = SGD

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = _SGD["lr"],
        momentum: float = _SGD["momentum"],
        dampening: float = _SGD["dampening"],
        debias: bool = _SGD["debias"],
        weight_decay: float = _SGD["weight_decay"],
        max_grad_norm: float | None = _SGD["max_grad_norm"],
        maximize: bool = False,
    ) -> None:
        super().__init__(params, locals())

    def _buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) * len(super()._buffers(group))  # named as torch.optim.SGD names it

    def _row_step(self, row: Row, hyper: dict[str, Any]) -> None:
        F.sgd(row.params, row.grads, row.buffers.get("momentum_buffer"), row.scalars["step"], **hyper)


class AdamBaseline(RowOptimizer):
    r"""Adam with bias correction and L2 weight decay (as ``torch.optim.Adam``), plus group-norm clipping.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_{t+1} &= \theta_t - \frac{\text{lr}}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Args:
        params: parameters or parameter groups.
        lr: learning rate, in (0, 1000].
        beta1: first-moment EWMA factor, in [0, 1).
        beta2: second-moment EWMA factor, in [0, 1).
        eps: added to the denominator (> 0).
        weight_decay: L2 penalty added to the gradient (>= 0; not decoupled).
        max_grad_norm: clip the group's gradient to this norm (> 0; None: no clipping).
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

    hyper = ADAM

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = _ADAM["lr"],
        beta1: float = _ADAM["beta1"],
        beta2: float = _ADAM["beta2"],
        eps: float = _ADAM["eps"],
        weight_decay: float = _ADAM["weight_decay"],
        max_grad_norm: float | None = _ADAM["max_grad_norm"],
        maximize: bool = False,
    ) -> None:
        super().__init__(params, locals())

    def _row_step(self, row: Row, hyper: dict[str, Any]) -> None:
        m, v = row.buffers["exp_avg"], row.buffers["exp_avg_sq"]
        F.adam(row.params, row.grads, m, v, row.scalars["step"], **hyper)
