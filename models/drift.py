"""Page-Hinkley drift detection on each stream's loss, vectorised over streams.

The test watches the loss relative to its own running mean, ``z = loss / mean - 1 - delta``, so one default
works for a price in the thousands and a probability alike. It accumulates ``z`` and raises an alarm when the
sum climbs more than ``threshold`` above its running minimum: a sustained rise of the loss, not one outlier.
The running mean is cumulative for its first ``MEAN_WINDOW`` losses, then an EWMA, so it follows slow change.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["MEAN_WINDOW", "page_hinkley"]

MEAN_WINDOW = 500


def page_hinkley(
    loss: Tensor,
    mask: Tensor,
    n: Tensor,
    mean: Tensor,
    total: Tensor,
    minimum: Tensor,
    *,
    delta: Tensor,
    threshold: Tensor,
    warmup: Tensor,
    enabled: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One update for rows where ``mask``; returns new ``(n, mean, total, minimum, alarm)``, all ``[rows]``.

    After an alarm the detector restarts (n = 0), so it measures the new regime from scratch.
    """
    active = mask & enabled
    safe_mean = mean.clamp_min(1e-30)
    z = loss / safe_mean - 1 - delta
    armed = active & (n > 0)
    new_total = total + z.where(armed, 0.0)
    new_min = minimum.minimum(new_total).where(armed, minimum)
    n1 = n + active.to(n.dtype)
    rate = 1.0 / n1.clamp(min=1, max=MEAN_WINDOW).to(loss.dtype)
    new_mean = (mean + (loss - mean) * rate).where(active, mean)
    alarm = armed & (n1 >= warmup) & (new_total - new_min > threshold)
    zero = new_total.new_zeros(())
    return (
        n1.where(~alarm, 0),
        new_mean.where(~alarm, zero),
        new_total.where(~alarm, zero),
        new_min.where(~alarm, zero),
        alarm,
    )
