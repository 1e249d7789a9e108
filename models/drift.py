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
    stats: Tensor,
    *,
    delta: Tensor | float,
    threshold: Tensor | float,
    warmup: Tensor | int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One update of the rows where ``active``; the others come back unchanged.

    Args:
        loss: ``[rows]`` this observation's loss (ignored where not ``active``).
        active: ``[rows]`` bool, rows that observed a finite loss with detection on.
        n: ``[rows]`` int, losses seen since the (re)start.
        stats: ``[3, rows]`` running mean, cumulative statistic and its minimum.
        delta, threshold, warmup: per row ``[rows]`` or shared.

    Returns:
        ``(n, stats, alarm)``, new values. After an alarm the detector restarts (n = 0, stats = 0), so it
        measures the new regime from scratch.
    """
    mean, total, minimum = stats.unbind(0)
    armed = active & (n >= warmup)
    z = loss / mean.clamp_min(1e-30) - (1 + delta)
    total = torch.where(armed, total + z, total)
    minimum = torch.minimum(minimum, total)  # unchanged where not armed: minimum <= total always holds
    n = n + active
    mean = torch.where(active, mean + (loss - mean) / n.clamp(1, MEAN_WINDOW), mean)
    alarm = armed & (total - minimum > threshold)
    return n.masked_fill(alarm, 0), torch.stack([mean, total, minimum]).masked_fill_(alarm, 0), alarm
