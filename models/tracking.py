"""The scale-free, preconditioned path of the closed-form families (docs/trackin.md, "Tracking real data").

A stream of ``linear``, ``ar`` (without hidden layers) or ``track`` learns, by default, with TrackIn's step
preconditioned by per-stream RLS covariances (one head per forgetting factor, their forecasts averaged by
their recent errors: :func:`head_shares`), on inputs and targets divided by scales it measured itself;
it serves a mix of its model and the naive forecast that fits its target, weighted by their recent errors,
and never departs from the naive forecast by more than ``BOUND`` times the naive's typical error. Every step
here is batched over the gathered rows of a pool (``[rows, ...]``), with no host sync: :func:`step` is the
round of :class:`models.round.TrackingRound`; ``tests/models/reference_tracking.py`` is the same math for one
stream, written plainly.

The constants below are the defaults chosen on ``../shared/data`` and the synthetic drifts (one set for all
data; bench/accuracy.py, docs/trackin.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from trackin.models import keys
from trackin.models.specs import (
    FORGET_HEADS,
    TRACKIN_EXTRA,
    ARModel,
    BaseOptimizerSpec,
    LinearModel,
    ModelSpec,
    StreamSpec,
    TrackModel,
)

__all__ = [
    "BOUND",
    "CLIP",
    "COV_CAP",
    "FEATURE_CLIP",
    "HEADS",
    "HEAD_RHO",
    "LINEAR_MIX_BIAS",
    "LINEAR_MIX_WARMUP",
    "LINEAR_PRIOR",
    "MIX_BIAS",
    "MIX_ETA",
    "MIX_POWER",
    "MIX_RHO",
    "MIX_WARMUP",
    "PRIOR",
    "SCALE_POOL",
    "SCALE_WARMUP",
    "STAT_ALPHA",
    "STAT_CLIP",
    "Layout",
    "head_shares",
    "layout",
    "linear_served",
    "mix_prior",
    "optimizer_kwargs",
    "prior",
    "scales_of",
    "step",
    "uses_tracking",
]

PRIOR = 1.0
"""Initial RLS covariance, ``PRIOR * I`` in scaled units: a ridge prior that starts every model at the naive
forecast and lets it leave only as the data insist (short object tracks need that). :func:`fold` keeps it
``PRIOR * I`` in whatever scales the stream has measured so far. With the fold, 1 against 0.3: the
synthetic drifts 1.32 / 1.47 / 1.33 -> 1.29 / 1.43 / 1.32 times the Kalman filter, the real-data targets
kept (docs/trackin.md, "Where it is lost")."""
LINEAR_PRIOR = 10.0
"""``PRIOR`` of a ``linear`` stream, whose input scales are pooled in the warm-up (``SCALE_POOL``): with
its first scales no longer one observation's ``|x_1j|``, a flatter prior (a ridge of 0.1 against unit-weight
observations, the tuned Kalman filter's 0.01) pays on the drifts; with unpooled scales it lost (3: velocity
1.153 -> 1.176 x the Kalman filter). Series keep ``PRIOR`` (their real-data targets were set with it)."""
CLIP = 8.0
"""A step's residual is clipped at ``CLIP`` times the running RMS residual (Huber in scaled units). 8, with
the linear scales taking each input before it is predicted from and ``MIX_RHO`` 0.95: the walk+jump drift's
jump (steps 2000-2050) 78.5 -> 59.1 against the Kalman filter's 53.6, and GBP/USD 0.99990 -> 0.99941, E-mini
0.47129 -> 0.47126, MOT17 IoU within 3e-5 (3 held the step to 3 RMS for dozens of steps after a jump; 30
put GBP/USD at 1.0005, 10 gained the drifts 1% more than 8; docs/trackin.md, "Where it is lost")."""
STAT_CLIP = 30.0
"""The residual that the running RMS residual and the heads' errors learn from is clipped at ``STAT_CLIP``
times the running RMS residual: wider than ``CLIP``, so the RMS grows within a few steps when the errors
stay large (a jump in the coefficients is then learned at full gain), while one wild value only widens it
once. At least ``CLIP``. 30: 3 (the step's clip, then 3) cost the walk+jump drift 1.84 against 1.42 times
the Kalman filter."""
FEATURE_CLIP = 1e3
"""Scaled features beyond this (a 1000-sigma value) are clipped, so one wild value cannot reach 1e30."""
BOUND = 10.0
"""The model may depart from the naive forecast by at most this many RMS errors of the naive forecast."""
COV_CAP = 1e3
"""The covariance's largest diagonal entry is capped here: no windup when a direction goes unexcited."""
STAT_ALPHA = 0.01
"""Weight of the newest value in the running residual and naive-error mean squares."""
SCALE_WARMUP = 32
"""Observations whose mean squares set a stream's scales; the scales are frozen after them."""
SCALE_POOL = math.pi**2 / 8
"""Sampling variance of one observation's log scale ``log |x|`` (normal ``x``), over ``n`` observations
``SCALE_POOL / n``: during the warm-up a ``linear`` stream's input log scales are shrunk to their mean by the
share of this noise in their variance across inputs (empirical Bayes, :func:`scales_of`). One observation's
``|x_1j|`` alone made the prior in raw units ``~ 1 / x_1j^2`` (a head learned at step 1 ``~ 1 / x_1j``),
heavy-tailed where the Kalman filter's is isotropic. Inputs of one scale are pooled to the end of the
warm-up, inputs of different units (log scales far apart) hardly at all; frozen scales are each input's
own. 0: off."""
MIX_RHO = 0.95
"""Discount of the model's and the naive forecast's absolute errors in the mix (about 20 observations): the
mix follows which of the two is better now (0.99 put GBP/USD 0.055% above no change, 0.95 0.01% below)."""
MIX_ETA = 1.0
"""Learning rate of the exponentially weighted mix, per unit of discounted relative advantage."""
MIX_BIAS = 2.0
"""Prior for the naive forecast: the model must prove itself (about 1% lower error over ~100 observations
for an even mix) before it is served. 8 (the one-head default) cost the drifts 10-25% more and gained
nothing on the real data (GBP/USD stays at 1.0000 either way)."""
MIX_POWER = 1.0
"""The mix weighs the model and the naive forecast by their discounted absolute errors: squared errors let a
few large misses decide, and chose models that lose on most boxes (MOT17-09's IoU)."""
MIX_WARMUP = 3
"""Steps during which only the naive forecast is served (the heads' fast ones are useful after a few; 1 gained
the drifts 1-2% but served a box 0.1% off constant velocity at its third observation)."""
LINEAR_MIX_BIAS = 0.0
"""``MIX_BIAS`` of a ``linear`` stream: none. A series' naive forecast (no change, constant velocity) has no
parameters and is exact from its first step, a structural prior worth odds of ``e^MIX_BIAS``; a linear
stream's is the running mean of its target, estimated from the same few observations as the model (whose
constant feature nests it), so neither starts ahead and the mix follows the evidence alone. On the drifts,
with CLIP 8: 1.177 / 1.336 / 1.186 -> 1.094 / 1.153 / 1.069 times the Kalman filter, most of it in the
first 10 steps (a one-observation mean is the naive's forecast at step 1: twice the target's variance);
series streams unchanged."""
LINEAR_MIX_WARMUP = 0
"""``MIX_WARMUP`` of a ``linear`` stream: none (its naive forecast is warming up too; see
``LINEAR_MIX_BIAS``)."""
HEADS = FORGET_HEADS
"""The default heads' forgetting factors (``forget`` in the spec)."""
HEAD_RHO = 0.995
"""Discount of each head's squared one-step errors, which weigh the heads (about 200 observations: 0.98
let noise pull the E-mini's weight off its 0.999 head, 0.4799 against 0.479; the drifts do not care)."""

Kind = Literal["linear", "delta", "level", "track"]


def uses_tracking(spec: StreamSpec) -> bool:
    """Whether a spec runs on this path (``StreamSpec`` resolves ``precondition: auto``)."""
    return spec.tracking


def optimizer_kwargs(opt: BaseOptimizerSpec) -> dict[str, Any]:
    """The TrackIn optimizer's arguments from its spec (without the fields that shape the pool)."""
    kwargs: dict[str, Any] = opt.model_dump(exclude={"name", *TRACKIN_EXTRA})
    return kwargs


@dataclass(frozen=True, slots=True)
class Layout:
    """Sizes of one pool's tracking state."""

    kind: Kind
    outputs: int  # k: the model's outputs (series: dim)
    features: int  # p: scaled features and the constant 1
    scales: int  # measured scales: inputs and targets (linear), rates (and levels) per dim (series)
    lags: int  # series: rates kept
    dim: int  # series: values per observation
    heads: int = 1  # RLS heads (one per forgetting factor)

    def entries(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tracking key and its per-stream shape (all in the pool's float buffer)."""
        k, p, h = self.outputs, self.features, self.heads
        out = [
            (keys.TRACK_COV, (h * p, p)),  # the heads' covariances stacked (one head: format 3's shape)
            (keys.TRACK_SCALE_M2, (self.scales,)),
            (keys.TRACK_SCALE_N, ()),
            (keys.TRACK_RESID2, (h * k,)),
            (keys.TRACK_NAIVE2, (k,)),
            (keys.TRACK_STAT_W, ()),
            (keys.HEAD_LOSS, (h * k,)),
            (keys.HEAD_S2, (k,)),
            (keys.MIX_MODEL, (k,)),
            (keys.MIX_NAIVE, (k,)),
            (keys.MIX_N, ()),
            (keys.TRACK_LEARNED, ()),
            *((key, ()) for key in keys.SKILL_FIGURES),
        ]
        if self.kind == "linear":
            out += [(keys.TRACK_MEAN, (k,)), (keys.TRACK_MEAN_W, ())]
        else:
            out += [
                (keys.SERIES_LAST, (self.dim,)),
                (keys.SERIES_TS, ()),
                (keys.SERIES_SEEN, ()),
                (keys.SERIES_RATE, (self.dim,)),
                (keys.SERIES_RATES, (self.lags, self.dim)),
            ]
        return out


def layout(model: ModelSpec, heads: int = 1) -> Layout:
    if isinstance(model, LinearModel):
        return Layout("linear", model.out_dim, model.in_dim + 1, model.in_dim + model.out_dim, 0, 0, heads)
    assert isinstance(model, ARModel | TrackModel)
    kind: Kind = "track" if isinstance(model, TrackModel) else model.target
    levels = model.dim if kind == "level" else 0
    features = model.lags * model.dim + levels + 1
    return Layout(kind, model.dim, features, model.dim + levels, model.lags, model.dim, heads)


Views = Mapping[str, Tensor]
OptimizerStep = Callable[[Tensor], None]
"""Steps the gathered rows' weights (flat ``[rows, k * p]``) in place given their preconditioned gradient."""


def _scales(lay: Layout, v: Views) -> Tensor:
    return scales_of(lay, v[keys.TRACK_SCALE_M2], v[keys.TRACK_SCALE_N])


def scales_of(lay: Layout, m2: Tensor, count: Tensor) -> Tensor:
    """``[rows, scales]``: the scales from the mean squares ``m2`` over ``count`` observations (1 where
    nothing was measured). A linear stream's input scales are pooled during the warm-up: ``log s_j`` is
    shrunk to the mean over the measured inputs by the share of sampling noise (``SCALE_POOL / count``) in
    their variance across inputs; none once the scales are frozen."""
    s = m2.sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s))
    pool = lay.scales - lay.outputs if lay.kind == "linear" else 0
    if pool < 2 or SCALE_POOL <= 0:
        return s
    own, measured = s[:, :pool], m2[:, :pool] > 0
    logs = torch.where(measured, own.log(), 0.0)
    m = measured.sum(1, keepdim=True).to(s.dtype)
    mean = logs.sum(1, keepdim=True) / m.clamp_min(1)
    spread = torch.where(measured, (logs - mean).square(), 0.0).sum(1, keepdim=True) / (m - 1).clamp_min(1)
    n = count.to(s.dtype).unsqueeze(1)
    noise = SCALE_POOL / n.clamp_min(1)
    between = (spread - noise).clamp_min(0.0)
    w = between / (between + noise)
    pooled = torch.exp(w * logs + (1 - w) * mean)
    pooled = torch.where(measured & (m > 1) & (n < SCALE_WARMUP), pooled, own)
    return torch.cat([pooled, s[:, pool:]], 1)


def prior(kind: Kind) -> float:
    """The RLS prior ``P_0 = prior * I`` in scaled units of a pool of ``kind``."""
    return LINEAR_PRIOR if kind == "linear" else PRIOR


def mix_prior(kind: Kind) -> tuple[float, int]:
    """The mix's prior for the naive forecast and its warm-up, for a pool of ``kind``: ``MIX_BIAS`` and
    ``MIX_WARMUP`` where the naive forecast has no parameters (series), none for ``linear`` (its naive
    forecast, the running mean, is estimated like the model)."""
    return (LINEAR_MIX_BIAS, LINEAR_MIX_WARMUP) if kind == "linear" else (MIX_BIAS, MIX_WARMUP)


def _weight(lay: Layout, v: Views, mix_naive: bool | Tensor) -> Tensor:
    """``[rows, k]``: the model's share of the served forecast."""
    bias, warmup = mix_prior(lay.kind)
    mm, mn, n = v[keys.MIX_MODEL], v[keys.MIX_NAIVE], v[keys.MIX_N].unsqueeze(1)
    total = (mm + mn).clamp_min(torch.finfo(mm.dtype).tiny)
    share = torch.sigmoid(MIX_ETA * 2 * n * (mn - mm) / total - bias)
    share = share * (v[keys.TRACK_LEARNED] >= warmup).unsqueeze(1)
    if isinstance(mix_naive, Tensor):
        return torch.where(mix_naive.unsqueeze(1), share, torch.ones_like(share))
    return share if mix_naive else torch.ones_like(share)


def head_shares(lay: Layout, v: Views) -> Tensor:
    """``[rows, heads, k]``: each head's share of the model, ``softmax_h(-(L_h - min L) / (2 s2))`` with
    ``L_h`` its discounted squared errors and ``s2`` the running mean square of the best head's error
    (discounted Bayesian model averaging; none measured yet: equal shares)."""
    n, h, k = v[keys.HEAD_S2].shape[0], lay.heads, lay.outputs
    loss = v[keys.HEAD_LOSS].view(n, h, k)
    tiny = torch.finfo(loss.dtype).tiny
    w = v[keys.TRACK_STAT_W].view(n, 1, 1)
    s2 = (v[keys.HEAD_S2].unsqueeze(1) / w.clamp_min(tiny)).clamp_min(tiny)
    return torch.softmax(-(loss - loss.amin(1, keepdim=True)) / (2 * s2), 1)


def _raw(lay: Layout, v: Views, phi: Tensor) -> Tensor:
    """``[rows, k]``: the model's output in scaled units, the heads' outputs weighted by their shares."""
    n = phi.shape[0]
    heads = v[keys.TRACK_WEIGHT].view(n, lay.heads, lay.outputs, lay.features)
    per_head = torch.matmul(heads, phi.view(n, 1, -1, 1)).squeeze(3)
    return (head_shares(lay, v) * per_head).sum(1)


def _bounded(v: Views, departure: Tensor) -> Tensor:
    """``departure`` from the naive forecast, within ``BOUND`` RMS naive errors (none measured yet: as is)."""
    w = v[keys.TRACK_STAT_W].unsqueeze(1)
    bound = BOUND * (v[keys.TRACK_NAIVE2] / w.clamp_min(torch.finfo(w.dtype).tiny)).sqrt()
    bound = torch.where(w > 0, bound, torch.full_like(bound, torch.inf))
    return torch.minimum(torch.maximum(departure, -bound), bound)


def _features(lay: Layout, v: Views, s: Tensor, x: Tensor | None) -> Tensor:
    """``[rows, p]``: scaled features and the constant 1."""
    if lay.kind == "linear":
        assert x is not None
        feats = x / s[:, : -lay.outputs]
    else:
        rates = v[keys.SERIES_RATES] / s[:, : lay.dim].unsqueeze(1)
        feats = rates.flatten(1)
        if lay.kind == "level":
            feats = torch.cat([feats, v[keys.SERIES_LAST] / s[:, lay.dim :]], 1)
    feats = feats.clamp(-FEATURE_CLIP, FEATURE_CLIP)
    return torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)


def series_rates(
    lay: Layout, v: Views, mix_naive: bool | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Naive, model and served rates of change ``[rows, dim]`` for the next value, the model's share of the
    served rate, and the features."""
    s = _scales(lay, v)
    naive = v[keys.SERIES_RATE] if lay.kind == "track" else torch.zeros_like(v[keys.SERIES_RATE])
    phi = _features(lay, v, s, None)
    raw = _raw(lay, v, phi)
    model = naive + _bounded(v, s[:, : lay.dim] * raw)
    share = _weight(lay, v, mix_naive)
    return naive, model, naive + share * (model - naive), share, phi


def linear_predictions(
    lay: Layout, v: Views, x: Tensor, mix_naive: bool | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Naive, model and served predictions ``[rows, k]`` of a linear pool for inputs ``x``, the model's
    share, and the features."""
    s = _scales(lay, v)
    phi = _features(lay, v, s, x.nan_to_num(0.0, 0.0, 0.0))
    w = v[keys.TRACK_MEAN_W].unsqueeze(1)
    naive = torch.where(w > 0, v[keys.TRACK_MEAN] / w.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
    raw = _raw(lay, v, phi)
    model = naive + _bounded(v, s[:, -lay.outputs :] * raw - naive)
    share = _weight(lay, v, mix_naive)
    return naive, model, naive + share * (model - naive), share, phi


def linear_served(
    lay: Layout, v: Views, x: Tensor, *, forget: Tensor, standardize: bool, mix_naive: bool | Tensor
) -> Tensor:
    """``[rows, k]``: what :func:`step` would serve for inputs ``x`` (``/predict``), on views the caller
    discards: the inputs' scales take ``x`` as the step's do (the target's mean square is fed itself, so its
    scale stays) and the heads are folded into them."""
    k = lay.outputs
    m2_old, n_old = v[keys.TRACK_SCALE_M2].clone(), v[keys.TRACK_SCALE_N].clone()
    values = torch.cat([x.nan_to_num(0.0, 0.0, 0.0), m2_old[:, -k:].sqrt()], 1)
    update = torch.isfinite(x).all(1) & standardize
    scales(v, values, update)
    fold(lay, v, m2_old, n_old, _scales(lay, v), forget)
    return linear_predictions(lay, v, x, mix_naive)[2]


def step(
    lay: Layout,
    v: Views,
    x: Tensor,
    y: Tensor | None,
    ts: Tensor | None,
    *,
    forget: Tensor,
    standardize: bool | Tensor,
    mix_naive: bool | Tensor,
    optimizer_step: OptimizerStep,
) -> dict[str, Tensor]:
    """One observation per gathered row, in place on the views; returns per-row outcomes.

    ``x``: inputs ``[rows, in]`` (series: the arriving values ``[rows, dim]``), ``y``: targets (linear),
    ``ts``: the series' times ``[rows]`` (None or NaN: one time unit after the previous value). Outcomes:
    ``served``, ``model`` and ``naive`` predictions ``[rows, k]`` in the target's units (series: levels;
    NaN for a series' first value), ``weight`` (the model's share), ``ok`` (a step was taken), ``first`` (a
    series' first value), ``nonfinite`` (refused: not finite, or a time not after the previous one).
    The optimizer state of rows that take no step is the caller's to restore.
    """
    finite = torch.isfinite(x).all(1)
    if lay.kind == "linear":
        assert y is not None
        finite = finite & torch.isfinite(y).all(1)
        first = torch.zeros_like(finite)
        ok = finite
        clean_y = y.nan_to_num(0.0, 0.0, 0.0)
        # the scales take this observation before it is predicted from: an input's feature is divided by
        # a scale that includes it, so it never exceeds sqrt(observations) (with the scale of the earlier
        # inputs alone, a stream's second feature is the Cauchy ratio x_2 / x_1, and the head learned at
        # step 1 in the scale |x_1| is ~ 1 / x_1: oscillation drift's step 1 cost 26 x the Kalman
        # filter's error). The target's scale cannot move the prediction (the fold keeps the raw mapping)
        m2_old, n_old = v[keys.TRACK_SCALE_M2].clone(), v[keys.TRACK_SCALE_N].clone()
        scales(v, torch.cat([x, clean_y], 1), ok & torch.as_tensor(standardize, device=x.device))
        s = _scales(lay, v)  # the step learns in the same scales
        fold(lay, v, m2_old, n_old, s, forget)
        naive, model, served, share, _ = linear_predictions(lay, v, x, mix_naive)
        target, learn_naive, learn_model = clean_y, naive, model
        phi = _features(lay, v, s, x.nan_to_num(0.0, 0.0, 0.0))
        scaled_target = clean_y / s[:, -lay.outputs :]
        levels = (served, model, naive)
    else:
        seen = v[keys.SERIES_SEEN] > 0
        last, last_ts = v[keys.SERIES_LAST], v[keys.SERIES_TS]
        now = last_ts + 1 if ts is None else torch.where(ts.isnan(), last_ts + 1, ts)
        finite = finite & torch.isfinite(now) & (~seen | (now > last_ts))
        first = ~seen & finite
        ok = seen & finite
        gap = torch.where(ok, now - last_ts, torch.ones_like(now)).unsqueeze(1)
        naive, model, served, share, _ = series_rates(lay, v, mix_naive)
        rate = torch.where(ok.unsqueeze(1), (x - last) / gap, 0.0)
        target, learn_naive, learn_model = rate, naive, model
        stat_values = torch.cat([rate, x], 1) if lay.kind == "level" else rate
        m2_old, n_old = v[keys.TRACK_SCALE_M2].clone(), v[keys.TRACK_SCALE_N].clone()
        scales(v, stat_values, ok & torch.as_tensor(standardize, device=x.device))
        s = _scales(lay, v)  # the step learns in the scales that include this observation
        fold(lay, v, m2_old, n_old, s, forget)
        phi = _features(lay, v, s, None)
        scaled_target = (rate - naive) / s[:, : lay.dim]
        levels = (last + gap * served, last + gap * model, last + gap * naive)
    learn(lay, v, phi, scaled_target, target, learn_model, learn_naive, ok, forget, optimizer_step)
    okc = ok.unsqueeze(1)
    if lay.kind == "linear":
        mean, mean_w = v[keys.TRACK_MEAN], v[keys.TRACK_MEAN_W]
        mean.copy_(torch.where(okc, mean * (1 - STAT_ALPHA) + target, mean))
        mean_w.copy_(torch.where(ok, mean_w * (1 - STAT_ALPHA) + 1, mean_w))
    else:
        rates = v[keys.SERIES_RATES]
        pushed = torch.cat([rate.unsqueeze(1), rates[:, :-1]], 1)
        rates.copy_(torch.where(okc.unsqueeze(2), pushed, rates))
        v[keys.SERIES_RATE].copy_(torch.where(okc, rate, v[keys.SERIES_RATE]))
        started = ok | first
        v[keys.SERIES_LAST].copy_(torch.where(started.unsqueeze(1), x, last))
        v[keys.SERIES_TS].copy_(torch.where(started, now, last_ts))
        v[keys.SERIES_SEEN].copy_(torch.where(started, torch.ones_like(now), v[keys.SERIES_SEEN]))
    nan = torch.full_like(levels[0], torch.nan)
    served_l, model_l, naive_l = (p.where(okc, nan) for p in levels)
    return {
        "served": served_l,
        "model": model_l,
        "naive": naive_l,
        "weight": share,
        "first": first,
        "ok": ok,
        "nonfinite": ~finite,
    }


def forecast(lay: Layout, v: Views, mix_naive: bool | Tensor) -> Tensor:
    """``[rows, dim]``: each series' next value one time unit ahead (NaN before its first value)."""
    served = v[keys.SERIES_LAST] + series_rates(lay, v, mix_naive)[2]
    return served.where((v[keys.SERIES_SEEN] > 0).unsqueeze(1), torch.nan)


def _unit_scales(lay: Layout, s: Tensor) -> tuple[Tensor, Tensor]:
    """``[rows, p]`` the features' scales (1 for the constant), ``[rows, k]`` the outputs'."""
    one = s.new_ones(s.shape[0], 1)
    if lay.kind == "linear":
        return torch.cat([s[:, : -lay.outputs], one], 1), s[:, -lay.outputs :]
    rate = s[:, : lay.dim]
    return torch.cat([rate.repeat(1, lay.lags), s[:, lay.dim :], one], 1), rate


def fold(lay: Layout, v: Views, m2_old: Tensor, n_old: Tensor, s_new: Tensor, forget: Tensor) -> None:
    """Re-express every head in the new scales, so the path stays RLS on the raw data while they move.

    With ``q`` the features' new over old scales and ``r`` the outputs' old over new: weights ``W * r q'``,
    covariances ``P * q q'``, the residual statistics ``* r^2`` (the same raw mapping and errors). The prior
    ``PRIOR * I`` was set in the old scales; what of it is left (``forget^t / PRIOR`` per feature) is moved
    to the new ones: ``P <- (P^-1 + C)^-1`` and ``W <- W - (W * c) P`` with ``c_j = forget^t / PRIOR *
    (1 - 1 / q_j^2)``, one rank-one update per feature. Rows whose scales did not move: ``q = r = 1``,
    ``c = 0``, unchanged to the bit; a pristine head (``W = 0``, ``P = PRIOR * I``) stays pristine."""
    n, h, k, p = s_new.shape[0], lay.heads, lay.outputs, lay.features
    # a scale not measured before (mean square 0) takes the new one: nothing was learned in it, and its
    # prior is already PRIOR (q = 1 there; 1 / q^2 of a first measurement would cancel catastrophically)
    s_old = torch.where(m2_old > 0, scales_of(lay, m2_old, n_old), s_new)
    f_old, o_old = _unit_scales(lay, s_old)
    f_new, o_new = _unit_scales(lay, s_new)
    q, r = f_new / f_old, o_old / o_new  # [rows, p], [rows, k]
    w = v[keys.TRACK_WEIGHT].view(n, h, k, p)
    w.mul_(q.view(n, 1, 1, p) * r.view(n, 1, k, 1))
    cov = v[keys.TRACK_COV].view(n, h, p, p)
    cov.mul_((q.unsqueeze(2) * q.unsqueeze(1)).unsqueeze(1))
    decay = torch.pow(forget.to(w.dtype).view(1, h, 1), v[keys.TRACK_LEARNED].view(n, 1, 1))
    c = decay / prior(lay.kind) * (1 - q.square().reciprocal()).unsqueeze(1)  # [rows, heads, p]
    moved = w.clone()
    for j in range(p):
        cj = c[:, :, j].view(n, h, 1, 1)
        col = cov[:, :, :, j : j + 1].clone()
        g = 1 / (1 + cj * col[:, :, j : j + 1])
        cov.sub_(cj * (col * col.mT) * g)  # symmetric to the bit
        cov[:, :, :, j : j + 1] = col * g  # row and column j without the cancellation (q up to 1e6)
        cov[:, :, j : j + 1, :] = (col * g).mT
    w.sub_(torch.matmul(moved * c.unsqueeze(2), cov.mT))
    r2 = r.square()
    v[keys.TRACK_RESID2].view(n, h, k).mul_(r2.unsqueeze(1))
    v[keys.HEAD_LOSS].view(n, h, k).mul_(r2.unsqueeze(1))
    v[keys.HEAD_S2].mul_(r2)


def learn(
    lay: Layout,
    v: Views,
    phi: Tensor,
    scaled_target: Tensor,
    target: Tensor,
    model: Tensor,
    naive: Tensor,
    ok: Tensor,
    forget: Tensor,
    optimizer_step: OptimizerStep,
) -> None:
    """The preconditioned step of every head and the running statistics, for rows ``ok`` (the others keep
    their state). ``forget``: the heads' forgetting factors ``[heads]``."""
    n, h, k, p = phi.shape[0], lay.heads, lay.outputs, lay.features
    weight, cov = v[keys.TRACK_WEIGHT].view(n, h, k, p), v[keys.TRACK_COV].view(n, h, p, p)
    resid2, head_loss = v[keys.TRACK_RESID2].view(n, h, k), v[keys.HEAD_LOSS].view(n, h, k)
    tiny = torch.finfo(phi.dtype).tiny
    okc = ok.unsqueeze(1)
    phi4 = phi.view(n, 1, p, 1)
    residual = scaled_target.unsqueeze(1) - torch.matmul(weight, phi4).squeeze(3)  # [rows, heads, k]
    stat_w = v[keys.TRACK_STAT_W].view(n, 1, 1)
    rms = (resid2 / stat_w.clamp_min(tiny)).sqrt()
    clip_on = (v[keys.TRACK_LEARNED] >= 2).view(n, 1, 1) & (stat_w > 0)
    limit = torch.where(clip_on, CLIP * rms, torch.inf)
    wide = torch.where(clip_on, STAT_CLIP * rms, torch.inf)
    residual = torch.minimum(torch.maximum(residual, -wide), wide).where(okc.unsqueeze(2), 0.0)
    stepped = torch.minimum(torch.maximum(residual, -limit), limit)  # the step's (Huber) residual
    lam = forget.to(phi.dtype).view(1, h, 1)
    p_phi = torch.matmul(cov, phi4).squeeze(3)  # [rows, heads, p]
    gain = p_phi / (lam + (phi.unsqueeze(1) * p_phi).sum(2, keepdim=True))
    grad = -(stepped.unsqueeze(3) * gain.unsqueeze(2))
    flat = v[keys.TRACK_WEIGHT]
    before = flat.clone()
    optimizer_step(grad.flatten(1))
    flat.copy_(torch.where(okc.unsqueeze(2), flat, before))
    new_cov = (cov - gain.unsqueeze(3) * p_phi.unsqueeze(2)) / lam.unsqueeze(3)
    new_cov = 0.5 * (new_cov + new_cov.mT)
    peak = new_cov.diagonal(dim1=2, dim2=3).amax(2)
    new_cov = new_cov * (COV_CAP / peak.clamp_min(COV_CAP)).view(n, h, 1, 1)
    cov.copy_(torch.where(okc.view(n, 1, 1, 1), new_cov, cov))
    best = head_loss.argmin(1, keepdim=True)  # the head the shares trusted most
    best_error2 = residual.gather(1, best).squeeze(1).square()
    keep = 1 - STAT_ALPHA
    okh = okc.unsqueeze(2)
    resid2.copy_(torch.where(okh, resid2 * keep + residual.square(), resid2))
    head_loss.copy_(torch.where(okh, head_loss * HEAD_RHO + residual.square(), head_loss))
    updates = (
        (keys.HEAD_S2, v[keys.HEAD_S2] * keep + best_error2),
        (keys.TRACK_NAIVE2, v[keys.TRACK_NAIVE2] * keep + (target - naive).square()),
        (keys.MIX_MODEL, MIX_RHO * v[keys.MIX_MODEL] + (target - model).abs() ** MIX_POWER),
        (keys.MIX_NAIVE, MIX_RHO * v[keys.MIX_NAIVE] + (target - naive).abs() ** MIX_POWER),
    )
    for key, value in updates:
        v[key].copy_(torch.where(okc, value, v[key]))
    for key, value in (
        (keys.TRACK_STAT_W, v[keys.TRACK_STAT_W] * keep + 1),
        (keys.MIX_N, MIX_RHO * v[keys.MIX_N] + 1),
        (keys.TRACK_LEARNED, v[keys.TRACK_LEARNED] + 1),
    ):
        v[key].copy_(torch.where(ok, value, v[key]))


def scales(v: Views, values: Tensor, update: Tensor) -> None:
    """Mean squares over a stream's first ``SCALE_WARMUP`` observations, then frozen (a scale that no longer
    moves leaves the learned mapping from inputs to predictions as it is)."""
    count = v[keys.TRACK_SCALE_N]
    update = update & (count < SCALE_WARMUP)
    new_count = count + 1
    m2 = v[keys.TRACK_SCALE_M2]
    blended = m2 + (values.square().nan_to_num(0.0, 0.0, 0.0) - m2) / new_count.unsqueeze(1)
    m2.copy_(torch.where(update.unsqueeze(1), blended, m2))
    count.copy_(torch.where(update, new_count, count))
