"""The PNG of ``trackin replay --plot``: forecasts against actual values, and the rolling loss.

Top: the last ``window`` scored observations of the stream that moved most (prices: the price; boxes: the
box centre's x and y, one panel each): actual values, trackin's forecasts (warming answers as the last value,
as they are scored) and the baseline's (no change for prices, constant velocity for boxes).
Bottom: rolling mean squared error of trackin and of the baseline over all scored observations, in file
order (log scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trackin.replay.summary import Summary

__all__ = ["plot_summary"]


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    if values.size == 0:
        return values
    sums = np.cumsum(np.r_[0.0, values])
    out: np.ndarray = (sums[window:] - sums[:-window]) / window
    return out


def _shown(values: np.ndarray, boxes: bool) -> tuple[np.ndarray, list[str]]:
    """What the top panel draws: the price, or the box centre (x, y)."""
    if boxes:
        return np.stack([values[:, 0] + values[:, 2] / 2, values[:, 1] + values[:, 3] / 2], 1), ["x", "y"]
    return values[:, :1], ["price"]


def plot_summary(summary: Summary, out: Path, window: int = 300) -> None:
    """Write the PNG to ``out``: one panel per value shown, then the rolling MSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boxes = summary.format == "mot"
    scored = summary.scored_mask
    model = ((summary.forecasts - summary.values) ** 2).sum(axis=1)
    base = ((summary.baseline_forecasts - summary.values) ** 2).sum(axis=1)
    # the stream that moved most (for prices, the only one)
    moved = np.bincount(summary.codes[scored], weights=base[scored], minlength=len(summary.stream_names))
    shown = int(moved.argmax()) if scored.any() else 0
    mine = np.flatnonzero(scored & (summary.codes == shown))[-window:]
    actual, names = _shown(summary.values[mine], boxes)
    forecast, _ = _shown(summary.forecasts[mine], boxes)
    baseline, _ = _shown(summary.baseline_forecasts[mine], boxes)
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(11, 3.2 * (len(names) + 1)), constrained_layout=True)
    where = summary.step_of[mine]
    step = "frame" if boxes else "row"
    stream = summary.stream_names[shown] if summary.stream_names else "?"
    for d, (ax, name) in enumerate(zip(axes[:-1], names, strict=True)):
        ax.plot(where, actual[:, d], "k.-", lw=1, ms=3, label="actual")
        ax.plot(where, forecast[:, d], "C1.-", lw=1, ms=3, label="trackin forecast")
        ax.plot(where, baseline[:, d], "C0.:", lw=1, ms=2, label=f"baseline ({summary.baseline})")
        what = f"box centre {name} (px)" if boxes else name
        ax.set_title(f"{stream}: {what}, last {mine.size} forecasts, each made before learning")
        ax.set_xlabel(step)
        ax.legend(loc="best", fontsize=8)

    positions = np.flatnonzero(scored)
    roll = min(max(20, positions.size // 50), max(1, positions.size))
    bottom = axes[-1]
    if positions.size:
        x = summary.step_of[positions][roll - 1 :]
        bottom.plot(x, _rolling_mean(model[scored], roll), "C1", lw=1.2, label="trackin")
        bottom.plot(x, _rolling_mean(base[scored], roll), "C0", lw=1.2, label="baseline")
        bottom.set_yscale("log")
        bottom.legend(loc="best", fontsize=8)
    unit = "px², 4 values summed" if boxes else "price²"
    bottom.set_title(
        f"rolling MSE over {roll} scored observations of all streams ({unit}); "
        f"overall ratio {summary.ratio:.3f}"
    )
    bottom.set_xlabel(step)
    fig.savefig(out, dpi=100)
    plt.close(fig)
