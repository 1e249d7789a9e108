"""A stream's running figures, as typed values: what the service reports and exports as metrics.

A round writes them into the stream's row (:mod:`models.round`); here they are read back, many streams at a
time, as one float64 block per pool, so a caller copies to the host once per call rather than once per
figure and stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trackin.models import keys
from trackin.models.layout import FLOAT, PackedState

__all__ = ["LOSS_EWMA_ALPHA", "FleetFigures", "StreamFigures", "figure_rows", "fleet_rows"]

LOSS_EWMA_ALPHA = 0.05
"""Weight of the newest loss in a stream's loss EWMA (about the last 20 observations)."""

_INTS = (keys.STEP, keys.NONFINITE, keys.DRIFT_COUNT, keys.DRIFT_LAST_STEP)
_FLEET = (keys.LOSS_EWMA, keys.BETA, keys.EPS_NORM)


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """One stream's figures. The float ones are NaN until the stream has been scored."""

    steps: int  # optimizer steps taken
    last_loss: float
    loss_ewma: float
    grad_norm: float  # of the last gradient, before clipping
    beta: float  # beta_t of the last step (TrackIn); the momentum factor (SGD) or beta1 (Adam)
    eps_norm: float  # ||eps_t|| (TrackIn with eta > 0), else 0
    nonfinite_skips: int  # observations refused because the loss or a gradient was not finite
    drifts: int  # drift alarms
    last_drift_step: int | None  # the step of the last alarm
    warming: bool  # a series that has no forecast yet (first-order ``ar``: still filling its lag window)
    model_loss: float  # loss EWMA of the model alone (scale-free path; NaN elsewhere)
    naive_loss: float  # loss EWMA of the naive forecast: no change, zero, the mean, constant velocity
    skill: float  # 1 - model_loss / naive_loss: above 0 the model beats the naive forecast
    mix_weight: float  # the model's share of the served forecast (mean over outputs)

    @classmethod
    def from_row(cls, row: Sequence[float]) -> StreamFigures:
        """From one row of :func:`figure_rows`, on the host."""
        last_loss, loss_ewma, grad_norm, beta, eps_norm, steps, nonfinite, drifts, last_step, warming = row[
            :10
        ]
        model_loss, naive_loss, mix_weight = row[10:]
        return cls(
            steps=int(steps),
            last_loss=last_loss,
            loss_ewma=loss_ewma,
            grad_norm=grad_norm,
            beta=beta,
            eps_norm=eps_norm,
            nonfinite_skips=int(nonfinite),
            drifts=int(drifts),
            last_drift_step=int(last_step) if drifts else None,
            warming=bool(warming),
            model_loss=model_loss,
            naive_loss=naive_loss,
            skill=_skill(model_loss, naive_loss),
            mix_weight=mix_weight,
        )


def _skill(model_loss: float, naive_loss: float) -> float:
    return 1.0 - model_loss / naive_loss if naive_loss > 0 else math.nan


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """Figures of every resident stream that has stepped, for the fleet histograms: each ``[streams]``,
    float64, on the host."""

    loss_ewma: Tensor
    beta: Tensor
    eps_norm: Tensor
    skill: Tensor  # 1 - model loss / naive loss, of the streams on the scale-free path only

    @classmethod
    def from_rows(cls, rows: Sequence[Tensor]) -> FleetFigures:
        """From the pools' :func:`fleet_rows` (on any device), with one copy to the host."""
        width = len(_FLEET) + 1
        block = torch.cat(list(rows)).cpu() if rows else torch.zeros(0, width, dtype=torch.float64)
        loss_ewma, beta, eps_norm, skill = block.T.contiguous()
        return cls(loss_ewma=loss_ewma, beta=beta, eps_norm=eps_norm, skill=skill[~skill.isnan()])


def figure_rows(packed: PackedState, slots: np.ndarray, window: int | None) -> np.ndarray:
    """``[len(slots), 13]`` float64 on the host: the fields of :class:`StreamFigures` in order, ``skill``
    left out (derived).

    ``window``: the lag window of a first-order ``ar`` pool (its streams warm until it is full), else None.
    Only the figure columns of those rows are read (:meth:`PackedState.read_columns`), one gather per
    buffer; the rest is host arithmetic on a few numbers.
    """
    c = packed.columns
    skill = keys.MODEL_LOSS in c
    seen = window is None and keys.SERIES_SEEN in c
    float_names = keys.FIGURES + (keys.SKILL_FIGURES if skill else ()) + ((keys.SERIES_SEEN,) if seen else ())
    int_names = _INTS + ((keys.AR_FILLED,) if window is not None else ())
    floats = packed.read_columns(slots, float_names).astype(np.float64)
    counters = packed.read_columns(slots, int_names)
    n, figures, skills = len(slots), len(keys.FIGURES), len(keys.SKILL_FIGURES)
    out = np.empty((n, figures + len(_INTS) + 1 + skills))
    out[:, :figures] = floats[:, :figures]
    out[:, figures : figures + len(_INTS)] = counters[:, : len(_INTS)]
    if window is not None:
        out[:, -skills - 1] = counters[:, len(_INTS)] < window
    else:
        out[:, -skills - 1] = floats[:, -1] == 0 if seen else 0.0
    out[:, -skills:] = floats[:, figures : figures + skills] if skill else math.nan
    return out


def fleet_rows(packed: PackedState, used: Tensor) -> Tensor:
    """``[n, 4]`` float64 (loss EWMA, beta_t, ||eps||, skill or NaN) of the used slots that have stepped,
    on the device."""
    stepped = used & (packed.views[keys.STEP] > 0)
    columns = [packed.columns[k].start for k in _FLEET]
    block = packed.buffers[FLOAT][:, columns][stepped].double()
    if keys.MODEL_LOSS in packed.columns:
        model = packed.views[keys.MODEL_LOSS][stepped].double()
        naive = packed.views[keys.NAIVE_LOSS][stepped].double()
        skill = torch.where(naive > 0, 1 - model / naive, math.nan)
    else:
        skill = torch.full((block.shape[0],), math.nan, dtype=torch.float64, device=block.device)
    return torch.cat([block, skill.unsqueeze(1)], 1)
