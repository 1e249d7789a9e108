"""How far two computations of the same float math may differ: from the dtype's epsilon and the work done.

Two code paths that compute the same formula round differently: the batched engine against the per-stream
reference (``baddbmm`` or a row sum against MKL's ``addmm`` and autograd), a server's batch of 40 rows
against a reference's batch of one (vector body or scalar tail, another reduction order). Which kernels run
is the CPU's choice: MKL and ATen pick them by instruction set (an Intel CPU with AVX-512 gets other MKL
kernels than an AMD one), by thread count and by memory alignment. So a comparison across code paths allows
rounding; bit equality is claimed only where the same kernels run on the same operands (a stream outside
the batch, a restored checkpoint stepping on, a pool grown by doubling against one allocated at full size).

The rule, :func:`tolerance`::

    rtol = ops * steps * eps(dtype)        atol = rtol * scale

* One evaluation. A chain of ``ops`` rounded operations whose operands are at most ``scale`` in magnitude is
  off the exact result by at most about ``ops * u * scale`` (u = eps / 2; Higham, *Accuracy and Stability of
  Numerical Algorithms*, the gamma_n bounds, first order). Two paths are each that far from the exact result,
  so they differ by at most ``ops * eps * scale``. ``atol`` comes from the operands' magnitude, not the
  result's: a prediction of -0.0018 made from terms of size 1 carries the terms' absolute rounding.
  :func:`step_ops` counts the chain of one observation of a stream (forward, gradient, optimizer update).
* Online steps. A difference made at one step is carried into the next through the state. An optimizer step
  at a stable learning rate does not enlarge a difference in the parameters (squared loss: the step maps a
  difference ``d`` to ``(I - 2 lr x x^T) d``, of norm at most ``|d|`` while ``lr |x|^2 <= 1``; momentum and
  the error correction are averages that decay), so the differences of the steps add up at most:
  ``steps`` times one step's. Two runs diverge chaotically only under dynamics that expand (a learning rate
  past the stability limit), and then no tolerance short of the values themselves would hold; the tests use
  stable settings, so a failure is a real difference in the math. Stable steps also shrink old differences:
  a stream forgets a difference after about ``1 / (1 - decay)`` steps of its slowest average (momentum
  gamma, eps_decay) or ``1 / (2 lr)`` steps of its gradient steps, so a long run passes that memory as
  ``steps`` and its tolerance stops growing with the run (:func:`memory`).

The bound is a worst case (every rounding at its maximum, all in one direction), so it holds on any CPU, and
it still notices a path that computes coarser than float32 or other math. ``tests/models/test_engine.py``
checks both: its comparisons pass when every op of the reference whose rounding depends on the kernel is
off by an ulp (:class:`tests.support.rounding.OtherRounding`; the long run then uses 2% of its tolerance),
and fail when those ops are off by 2**10 ulps; a reference whose learning rate is off by 0.1% misses the
long run's tolerance 14 times over (by 0.01%: 1.4 times). float64 comparisons use the same rule, so
float64 keeps a 2**29 times smaller tolerance and stays the test of the math itself.
"""

from __future__ import annotations

import itertools
import math
from typing import TypedDict

import torch

from trackin.models.specs import ARModel, LinearModel, MLPModel, layer_sizes

__all__ = ["Tolerance", "memory", "step_ops", "tolerance"]

# Rounded operations of one optimizer update beyond its sums over the parameters: weight decay, clipping,
# the beta rule's ratios and square roots, the momentum and eps averages, the debias division, the update.
OPTIMIZER_OPS = 24


class Tolerance(TypedDict):
    """Keyword arguments for ``torch.testing.assert_close`` and ``numpy.testing.assert_allclose``."""

    rtol: float
    atol: float


def tolerance(dtype: torch.dtype | str, *, ops: int, steps: int = 1, scale: float = 1.0) -> Tolerance:
    """rtol and atol for two code paths computing the same ``dtype`` math (see the module docstring).

    Args:
        dtype: the dtype the paths compute in (``torch.float32`` or its name).
        ops: rounded operations on the longest chain of one evaluation (:func:`step_ops` for one observation).
        steps: evaluations whose differences accumulate: the steps a stream took, or its :func:`memory` when
            that is shorter.
        scale: magnitude of the values the compared quantity is computed from (inputs, targets, parameter
            terms); its square for quantities that are squares of such values (an mse loss, a gradient
            norm's average).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    assert isinstance(dtype, torch.dtype), dtype
    assert dtype.is_floating_point, dtype
    if ops < 1 or steps < 0 or scale <= 0:
        raise ValueError(f"Invalid tolerance size: ops={ops}, steps={steps}, scale={scale}")
    bound = ops * max(steps, 1) * torch.finfo(dtype).eps
    return {"rtol": bound, "atol": bound * scale}


def step_ops(model: LinearModel | MLPModel | ARModel) -> int:
    """Rounded operations on the longest chain of one observation of a stream of this model.

    Forward and backward through every layer (a dot product over the fan-in or fan-out, the bias, the
    activation), the loss, and the optimizer update, whose norms and dot products sum over every parameter.
    """
    sizes = layer_sizes(model)
    layers = sum(fan_in + fan_out + 2 for fan_in, fan_out in itertools.pairwise(sizes))
    n_params = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))
    return 2 * layers + n_params + OPTIMIZER_OPS


def memory(*, decays: tuple[float, ...] = (), lrs: tuple[float, ...] = ()) -> int:
    """Steps after which a stable stream has forgotten a difference: ``1 / (1 - decay)`` for its slowest
    average (momentum gamma, eps_decay, Adam's beta1), ``1 / (2 lr)`` for its gradient steps (squared loss on
    inputs of unit variance)."""
    spans = [1 / (1 - d) for d in decays if d < 1] + [1 / (2 * lr) for lr in lrs]
    if not spans:
        raise ValueError("memory needs a decay below one or a learning rate")
    return math.ceil(max(spans))
