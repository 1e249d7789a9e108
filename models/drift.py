"""Page-Hinkley drift detection on each stream's loss, vectorised over streams.

The test watches the loss relative to its own running mean, ``z = loss / mean - 1 - delta``, so one default
works for a price in the thousands and a probability alike. It accumulates ``z`` and raises an alarm when the
sum climbs more than ``threshold`` above its running minimum: a sustained rise of the loss, not one outlier.
The running mean is cumulative for its first ``MEAN_WINDOW`` losses, then an EWMA, so it follows slow change.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MEAN_WINDOW", "page_hinkley"]

MEAN_WINDOW = 500


def page_hinkley(
    loss: Tensor,
    active: Tensor,
    n: Tensor,
    mean: Tensor,
    total: Tensor,
    minimum: Tensor,
    *,
    delta: Tensor | float,
    threshold: Tensor | float,
    warmup: Tensor | int,
) -> Tensor:
    """One update of the rows where ``active``, in place; the others are left unchanged. Returns the alarms.

    Args:
        loss: ``[rows]`` this observation's loss (ignored where not ``active``).
        active: ``[rows]`` bool, rows that observed a finite loss with detection on.
        n: ``[rows]`` int, losses seen since the (re)start (updated in place).
        mean, total, minimum: ``[rows]`` running mean of the loss, cumulative statistic and its minimum
            (updated in place; strided columns of a larger block are fine).
        delta, threshold, warmup: per row ``[rows]`` or shared.

    After an alarm the detector restarts (n = 0, statistics 0), so it measures the new regime from scratch.
    """
    armed = active & (n >= warmup)
    z = loss / mean.clamp_min(1e-30) - (1 + delta)
    torch.where(armed, total + z, total, out=total)
    torch.minimum(minimum, total, out=minimum)  # unchanged where not armed: minimum <= total always holds
    n.add_(active)
    torch.where(active, mean + (loss - mean) / n.clamp(1, MEAN_WINDOW), mean, out=mean)
    alarm = armed & (total - minimum > threshold)
    for t in (n, mean, total, minimum):
        t.masked_fill_(alarm, 0)
    return alarm
