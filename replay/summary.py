"""What a replay measured: its figures, how they were scored, and per observation what its plot draws."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trackin.replay.errors import DivergedError
from trackin.replay.scoring import (
    constant_velocity,
    last_value,
    or_last_value,
    scored_set,
    session_gaps,
)
from trackin.replay.sinks import Result
from trackin.replay.sources import Format, Steps

__all__ = ["Answers", "Summary", "summarise"]


@dataclass(slots=True)
class Answers:
    """trackin's answers, per observation: prediction (NaN when none), loss (NaN when none), flags."""

    predictions: np.ndarray  # [n, dim]
    losses: np.ndarray  # [n]
    warming: np.ndarray  # [n] bool: no forecast yet (the lag window is filling)
    nonfinite: np.ndarray  # [n] bool: skipped as non-finite, or a prediction that is not finite
    applied: int = 0

    @classmethod
    def empty(cls, n: int, dim: int) -> Answers:
        return cls(np.full((n, dim), np.nan), np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool))

    def record(self, i: int, result: Result) -> None:
        """Observation ``i``'s answer as on the wire."""
        prediction = result.get("prediction")
        bad = result.get("skipped") == "nonfinite"
        if prediction is not None:
            self.predictions[i] = prediction
            bad = bad or not np.isfinite(self.predictions[i]).all()
        else:
            self.warming[i] = not bad  # no forecast yet (a family without the flag answers None too)
        if result.get("warming"):
            self.warming[i] = True
        self.nonfinite[i] = bad
        if result.get("loss") is not None:
            self.losses[i] = result["loss"]
        self.applied += bool(result.get("applied"))


@dataclass
class Summary:
    """A replay's figures; squared errors are in the file's units, summed over a box's 4 values."""

    name: str
    format: Format
    transport: str
    observations: int
    streams: int
    scored: int  # observations in the fixed scored set
    warming: int  # scored observations that trackin answered without a forecast: scored as the last value
    gaps: int  # first changes across a session gap, not scored
    nonfinite: int  # observations whose answer was not finite
    applied: int
    seconds: float
    mean_loss: float  # the engine's loss on the values sent (NaN when no step was taken)
    mse: float  # trackin
    baseline_mse: float
    baseline: str  # which baseline
    unit: float
    spec: dict[str, Any]  # validated: every default filled in
    requested: dict[str, Any]  # as sent: the fields the replay chose
    # per observation, for plots: values, trackin's forecasts (warming: the last value), the baseline's
    values: np.ndarray = field(repr=False)
    forecasts: np.ndarray = field(repr=False)
    baseline_forecasts: np.ndarray = field(repr=False)
    scored_mask: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)  # stream of each observation, as an index
    step_of: np.ndarray = field(repr=False)  # file position (row, frame) of each observation
    stream_names: list[str] = field(default_factory=list, repr=False)  # by code

    @property
    def throughput(self) -> float:
        return self.observations / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ratio(self) -> float:
        return self.mse / self.baseline_mse if self.baseline_mse > 0 else float("nan")

    def failure(self) -> str | None:
        """Why this run counts as diverged, or None."""
        if self.nonfinite:
            return f"trackin diverged: {self.nonfinite:,} answer(s) with a non-finite loss or forecast"
        if not math.isfinite(self.mean_loss) and self.applied:
            return f"trackin diverged: mean loss {self.mean_loss}"
        if not math.isfinite(self.mse) and self.scored:
            return f"trackin diverged: MSE of its forecasts {self.mse}"
        return None

    def check(self) -> None:
        """Raise :class:`DivergedError` if the run diverged."""
        reason = self.failure()
        if reason is not None:
            raise DivergedError(f"{self.name}: {reason} (spec {json.dumps(self.requested)})")

    def lines(self) -> list[str]:
        unit = "px" if self.format == "mot" else "price"
        gaps = f"; {self.gaps:,} change(s) across session gaps not scored" if self.format != "mot" else ""
        loss = f"{self.mean_loss:.4g}" if self.applied else "none (no step taken)"
        scale = f", values sent / {self.unit:g}" if self.unit != 1 else ""
        return [
            f"replay {self.name} ({self.format}, {self.streams:,} stream(s), {self.transport})",
            f"  spec           {json.dumps(self.requested)} ({_defaults(self.spec)})",
            f"  observations   {self.observations:,} ({self.applied:,} steps)",
            f"  scored         {self.scored:,} (each stream's 3rd observation on; {self.warming:,} warming "
            f"answer(s) scored as the last value{gaps})",
            f"  throughput     {self.throughput:,.0f} obs/s ({self.seconds:.2f} s)",
            f"  mean loss      {loss} ({self.spec.get('loss')}{scale})",
            f"  MSE trackin    {self.mse:.6g} {unit}^2",
            f"  MSE baseline   {self.baseline_mse:.6g} {unit}^2 ({self.baseline})",
            f"  ratio          {self.ratio:.4f} (trackin / baseline; below 1 beats it)",
        ]


def _defaults(spec: dict[str, Any]) -> str:
    """What the defaults made of the spec: its loss and optimizer."""
    optimizer = spec.get("optimizer", {})
    return f"with its defaults: loss {spec.get('loss')}, {optimizer.get('name')} lr {optimizer.get('lr')}"


def summarise(
    steps: Steps,
    codes: np.ndarray,
    previous: np.ndarray,
    answers: Answers,
    seconds: float,
    transport: str,
    spec: dict[str, Any],
    requested: dict[str, Any],
    unit: float,
    gap_factor: float,
) -> Summary:
    """Score ``answers`` against the baseline on the fixed scored set (:mod:`trackin.replay.scoring`)."""
    values = steps.values
    boxes = steps.format == "mot"
    step_of = steps.step_of()
    gaps = session_gaps(None if boxes else steps.times, previous, gap_factor)
    scored = scored_set(codes, gaps)
    if boxes:
        baseline, name = (
            constant_velocity(values, previous, step_of),
            "constant velocity on the frame numbers",
        )
    else:
        baseline, name = last_value(values, previous), "no change: the last value"
    forecasts, _ = or_last_value(
        np.where(answers.warming[:, None], np.nan, answers.predictions), values, previous
    )
    model_se = ((forecasts - values) ** 2).sum(axis=1)[scored]
    base_se = ((baseline - values) ** 2).sum(axis=1)[scored]
    losses = answers.losses[~np.isnan(answers.losses)]
    return Summary(
        name=steps.name,
        format=steps.format,
        transport=transport,
        observations=len(steps),
        streams=int(codes.max()) + 1 if codes.size else 0,
        scored=int(scored.sum()),
        warming=int((answers.warming & scored).sum()),
        gaps=int((gaps & (previous >= 0)).sum()),
        nonfinite=int(answers.nonfinite.sum()),
        applied=answers.applied,
        seconds=seconds,
        mean_loss=float(losses.mean()) if losses.size else float("nan"),
        mse=float(model_se.mean()) if model_se.size else float("nan"),
        baseline_mse=float(base_se.mean()) if base_se.size else float("nan"),
        baseline=name,
        unit=unit,
        spec=spec,
        requested=requested,
        values=values,
        forecasts=forecasts,
        baseline_forecasts=baseline,
        scored_mask=scored,
        codes=codes,
        step_of=step_of,
    )
