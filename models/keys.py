"""The names of a stream's state tensors, and the checkpoint format version: the strings that cross a layer.

A pool (:mod:`models.layout`) names every per-stream tensor by one of these keys, ``StreamPool.export`` and
``load`` exchange them, and the service's checkpoint codec stores them with ``FORMAT_VERSION``. Code outside
``models/`` reads figures through the typed accessors of :class:`models.engine.Engine`, not these strings.
Renaming a key or changing a shape breaks the checkpoints already written: bump ``FORMAT_VERSION`` and give
the codec an upgrade from the previous version.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AR_FILLED",
    "AR_WINDOW",
    "BETA",
    "DRIFT_COUNT",
    "DRIFT_DELTA",
    "DRIFT_ENABLED",
    "DRIFT_LAST_STEP",
    "DRIFT_MEAN",
    "DRIFT_MIN",
    "DRIFT_N",
    "DRIFT_RESET",
    "DRIFT_THRESHOLD",
    "DRIFT_TOTAL",
    "DRIFT_WARMUP",
    "EPS_NORM",
    "FIGURES",
    "FORMAT_VERSION",
    "GRAD_NORM",
    "HEAD_LOSS",
    "HEAD_S2",
    "HUBER_DELTA",
    "LAST_LOSS",
    "LOSS_EWMA",
    "MIX_MODEL",
    "MIX_N",
    "MIX_NAIVE",
    "MIX_WEIGHT",
    "MODEL_LOSS",
    "NAIVE_LOSS",
    "NONFINITE",
    "NORM_N",
    "NORM_X_MEAN",
    "NORM_X_VAR",
    "NORM_Y_MEAN",
    "NORM_Y_VAR",
    "SERIES_LAST",
    "SERIES_RATE",
    "SERIES_RATES",
    "SERIES_SEEN",
    "SERIES_TS",
    "SKILL_FIGURES",
    "STEP",
    "TRACK_COV",
    "TRACK_LEARNED",
    "TRACK_MEAN",
    "TRACK_MEAN_W",
    "TRACK_NAIVE2",
    "TRACK_RESID2",
    "TRACK_SCALE_M2",
    "TRACK_SCALE_N",
    "TRACK_STAT_W",
    "TRACK_WEIGHT",
    "buffer",
    "hyper",
    "opt",
    "param",
]

FORMAT_VERSION: Final = 4
"""Version of the checkpoint layout (these keys, their dtypes and shapes); see ``service.store.codec``."""


def param(name: str) -> str:
    """A parameter: ``param/weight0``."""
    return f"param/{name}"


def buffer(kind: str, name: str) -> str:
    """An optimizer buffer of one parameter: ``opt/momentum/weight0``."""
    return f"opt/{kind}/{name}"


def opt(name: str) -> str:
    """Optimizer state with one value per stream: ``opt/step``, ``opt/sq_avg``."""
    return f"opt/{name}"


def hyper(name: str) -> str:
    """A stream's hyperparameter: ``hyper/lr``."""
    return f"hyper/{name}"


STEP: Final = opt("step")
HUBER_DELTA: Final = hyper("huber_delta")
AR_WINDOW: Final = "ar/window"
AR_FILLED: Final = "ar/filled"

LAST_LOSS: Final = "fig/last_loss"
LOSS_EWMA: Final = "fig/loss_ewma"
GRAD_NORM: Final = "fig/grad_norm"
BETA: Final = "fig/beta"
EPS_NORM: Final = "fig/eps_norm"
FIGURES: Final = (LAST_LOSS, LOSS_EWMA, GRAD_NORM, BETA, EPS_NORM)
"""The float figures a round writes, in layout order (one slice of the float buffer)."""
NONFINITE: Final = "fig/nonfinite"

DRIFT_MEAN: Final = "drift/mean"
DRIFT_TOTAL: Final = "drift/total"
DRIFT_MIN: Final = "drift/min"
DRIFT_N: Final = "drift/n"
DRIFT_COUNT: Final = "drift/count"
DRIFT_LAST_STEP: Final = "drift/last_step"
DRIFT_DELTA: Final = "drift/delta"
DRIFT_THRESHOLD: Final = "drift/threshold"
DRIFT_WARMUP: Final = "drift/warmup"
DRIFT_ENABLED: Final = "drift/enabled"
DRIFT_RESET: Final = "drift/reset"

# The first-order path's running statistics (models/standardize.py), when the spec standardises.
NORM_X_MEAN: Final = "norm/x_mean"
NORM_X_VAR: Final = "norm/x_var"
NORM_Y_MEAN: Final = "norm/y_mean"
NORM_Y_VAR: Final = "norm/y_var"
NORM_N: Final = "norm/n"

# The scale-free, preconditioned path (models/tracking.py): the weights are the parameter ``weight``.
TRACK_WEIGHT: Final = param("weight")
TRACK_COV: Final = "track/cov"
TRACK_SCALE_M2: Final = "track/scale_m2"
TRACK_SCALE_N: Final = "track/scale_n"
TRACK_RESID2: Final = "track/resid2"
TRACK_NAIVE2: Final = "track/naive2"
TRACK_STAT_W: Final = "track/stat_w"
HEAD_LOSS: Final = "track/head_loss"
HEAD_S2: Final = "track/head_s2"
TRACK_LEARNED: Final = "track/learned"
TRACK_MEAN: Final = "track/mean"
TRACK_MEAN_W: Final = "track/mean_w"
MIX_MODEL: Final = "mix/model"
MIX_NAIVE: Final = "mix/naive"
MIX_N: Final = "mix/n"
SERIES_LAST: Final = "series/last"
SERIES_TS: Final = "series/ts"
SERIES_SEEN: Final = "series/seen"
SERIES_RATE: Final = "series/rate"
SERIES_RATES: Final = "series/rates"
MODEL_LOSS: Final = "fig/model_loss"
NAIVE_LOSS: Final = "fig/naive_loss"
MIX_WEIGHT: Final = "fig/mix_weight"
SKILL_FIGURES: Final = (MODEL_LOSS, NAIVE_LOSS, MIX_WEIGHT)
"""Loss EWMAs (the stream's loss) of the model alone and of the naive forecast, and the model's mean share
of the served forecast: one slice of the float buffer, after ``FIGURES``."""
