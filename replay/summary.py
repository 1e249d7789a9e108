"""What a replay measured: its figures, and per observation the arrays its plot draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trackin.replay.sources import Format

__all__ = ["Summary"]


@dataclass
class Summary:
    """A replay's figures; squared errors are in the file's units, summed over a box's 4 values."""

    name: str
    format: Format
    transport: str
    observations: int
    streams: int
    scored: int  # observations with both a trackin prediction and a previous value
    applied: int
    seconds: float
    mean_loss: float  # the service's loss (on changes, in units of ``unit``)
    mse: float  # trackin
    baseline_mse: float  # no change
    unit: float
    spec: dict[str, Any]
    # per observation, for plots: values, trackin's predictions (NaN when none), previous values, losses
    values: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    previous: np.ndarray = field(repr=False)  # index of the stream's previous observation, -1 for none
    losses: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)  # stream of each observation, as an index
    step_of: np.ndarray = field(repr=False)  # file position (row, frame) of each observation
    stream_names: list[str] = field(default_factory=list, repr=False)  # by code

    @property
    def throughput(self) -> float:
        return self.observations / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ratio(self) -> float:
        return self.mse / self.baseline_mse if self.baseline_mse > 0 else float("nan")

    def lines(self) -> list[str]:
        unit = "px" if self.format == "mot" else "price"
        return [
            f"replay {self.name} ({self.format}, {self.streams:,} stream(s), {self.transport})",
            f"  observations   {self.observations:,} ({self.scored:,} scored, {self.applied:,} steps)",
            f"  throughput     {self.throughput:,.0f} obs/s ({self.seconds:.2f} s)",
            f"  mean loss      {self.mean_loss:.4g} ({self.spec['loss']} on changes, unit {self.unit:g})",
            f"  MSE trackin    {self.mse:.6g} {unit}^2",
            f"  MSE baseline   {self.baseline_mse:.6g} {unit}^2 (no change: last value)",
            f"  ratio          {self.ratio:.4f} (trackin / baseline; below 1 beats it)",
        ]
