"""The fused CPU kernel of a tracking round: :func:`models.tracking.step` and :class:`TrackingRound`'s frame
(the TrackIn step on the preconditioned gradient, figures, Page-Hinkley) for each row of a round, in one
compiled loop, in place on the pool's packed buffers (docs/engine.md, "Fused tracking kernel").

It is one more implementation of the same math, not a new definition: every constant arrives in ``fc``
from :mod:`models.tracking` and friends, every column offset in ``col`` from the pool's layout, and each
row's hyperparameters are read from its own columns (so any mix of beta rules, debias, weight decay and
clipping within a pool runs here). Arithmetic is float64 whatever the buffer's dtype; results are stored in
the buffer's dtype. Rows are taken in order, each reading the state its predecessors left, so a batch that
holds a stream twice is one call (the same as one round per occurrence). Only NumPy arrays and numbers go
in: :mod:`models.fused_tracking` builds them. The steps of one row are :mod:`models.fused_tracking_steps`,
the indices of the settings and columns :mod:`models.fused_tracking_layout`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from trackin.models.fused_tracking_layout import (
    C_EWMA,
    C_PH_WINDOW,
    C_STAT_ALPHA,
    FL_APPLIED,
    FL_DRIFT,
    FL_NONFINITE,
    FL_WARMING,
    K_DIM,
    K_HUBER,
    K_IN,
    K_KIND,
    K_LAGS,
    K_NSCALE,
    K_OUT,
    K_P,
    K_STANDARDIZE,
    LEVEL,
    LINEAR,
    O_DEN,
    O_DMIN,
    O_DTOT,
    O_FIG,
    O_HD,
    O_LAST,
    O_MEAN,
    O_MEANW,
    O_NONFIN,
    O_RATE,
    O_RATES,
    O_SEEN,
    O_SKILL,
    O_STEP,
    O_TS,
)
from trackin.models.fused_tracking_steps import (
    ewma,
    features,
    learn,
    page_hinkley,
    predictions,
    row_loss,
    scales,
    update_scales,
)


@njit(cache=True, nogil=True)
def tracking_round(
    fbuf: np.ndarray,
    ibuf: np.ndarray,
    bbuf: np.ndarray,
    slots: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ts: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    pred: np.ndarray,
    loss: np.ndarray,
    forecast: np.ndarray,
    step: np.ndarray,
    flags: np.ndarray,
) -> None:
    """One observation per row, rows in order, in place on the buffers ``fbuf``, ``ibuf``, ``bbuf``.

    ``x``: inputs (series: the arriving values), ``y``: targets (linear; series ``[n, 0]``), ``ts``: the
    series' times (NaN: one unit after the previous value). Outcomes: ``pred`` (served, NaN where no step),
    ``loss``, ``forecast`` (series: the next value, NaN before the first), ``step`` and ``flags``.
    """
    k, p, kind, nscale = cfg[K_OUT], cfg[K_P], cfg[K_KIND], cfg[K_NSCALE]
    dim = cfg[K_DIM]
    s = np.empty(nscale)
    phi = np.empty(p)
    naive, model, served, share = np.empty(k), np.empty(k), np.empty(k), np.empty(k)
    scaled, target, values = np.empty(k), np.empty(k), np.empty(nscale)
    lv_s, lv_m, lv_n = np.empty(k), np.empty(k), np.empty(k)
    work = np.empty(2 * p + k + k * p)
    nan = math.nan
    for r in range(slots.shape[0]):
        row = slots[r]
        f, i, b = fbuf[row], ibuf[row], bbuf[row]
        xr = x[r]
        finite = True
        for j in range(xr.shape[0]):
            finite = finite and math.isfinite(xr[j])
        first = False
        now, last_ts, gap = 0.0, 0.0, 1.0
        if kind == LINEAR:
            for o in range(k):
                finite = finite and math.isfinite(y[r, o])
            ok = finite
        else:
            seen = f[col[O_SEEN]] > 0
            last_ts = f[col[O_TS]]
            now = last_ts + 1 if math.isnan(ts[r]) else ts[r]
            finite = finite and math.isfinite(now) and (not seen or now > last_ts)
            first = finite and not seen
            ok = finite and seen
        flags[FL_WARMING, r], flags[FL_APPLIED, r], flags[FL_NONFINITE, r] = first, ok, not finite
        flags[FL_DRIFT, r] = False
        if not ok:
            if not finite:
                i[col[O_NONFIN]] += 1
            if first:
                for d in range(dim):
                    f[col[O_LAST] + d] = xr[d]
                f[col[O_TS]] = now
                f[col[O_SEEN]] = 1.0
            if b[col[O_DEN]] and not f[col[O_DMIN]] <= f[col[O_DTOT]]:  # torch.minimum: NaN wins
                f[col[O_DMIN]] = f[col[O_DTOT]]
            pred[r, :] = nan
            loss[r] = nan
        else:
            scales(f, col, nscale, s)
            features(f, xr, cfg, fc, col, s, phi)
            predictions(f, cfg, fc, col, s, phi, naive, model, served, share)
            if kind == LINEAR:
                for o in range(k):
                    target[o] = y[r, o]
                for j in range(cfg[K_IN]):
                    values[j] = xr[j]
                for o in range(k):
                    values[cfg[K_IN] + o] = y[r, o]
            else:
                gap = now - last_ts
                for d in range(dim):
                    target[d] = (xr[d] - f[col[O_LAST] + d]) / gap
                    values[d] = target[d]
                if kind == LEVEL:
                    for d in range(dim):
                        values[dim + d] = xr[d]
            if cfg[K_STANDARDIZE] and update_scales(f, fc, col, values, nscale):
                scales(f, col, nscale, s)  # the step learns in the scales that include this observation
                features(f, xr, cfg, fc, col, s, phi)
            for o in range(k):
                if kind == LINEAR:
                    scaled[o] = target[o] / s[cfg[K_IN] + o]
                    lv_s[o], lv_m[o], lv_n[o] = served[o], model[o], naive[o]
                else:
                    scaled[o] = (target[o] - naive[o]) / s[o]
                    last = f[col[O_LAST] + o]
                    lv_s[o], lv_m[o], lv_n[o] = (
                        last + gap * served[o],
                        last + gap * model[o],
                        last + gap * naive[o],
                    )
            grad_norm, beta_t, eps_norm = learn(
                f, i, b, cfg, fc, col, phi, scaled, target, model, naive, work
            )
            if kind == LINEAR:
                keep = 1 - fc[C_STAT_ALPHA]
                for o in range(k):
                    f[col[O_MEAN] + o] = f[col[O_MEAN] + o] * keep + target[o]
                f[col[O_MEANW]] = f[col[O_MEANW]] * keep + 1
                levels = y[r]
            else:
                R = col[O_RATES]
                for j in range(cfg[K_LAGS] * dim - 1, dim - 1, -1):
                    f[R + j] = f[R + j - dim]
                for d in range(dim):
                    f[R + d] = target[d]
                    f[col[O_RATE] + d] = target[d]
                    f[col[O_LAST] + d] = xr[d]
                f[col[O_TS]] = now
                f[col[O_SEEN]] = 1.0
                levels = xr
            huber, delta = cfg[K_HUBER], f[col[O_HD]]
            lo = row_loss(lv_s, levels, k, huber, delta)
            F0 = col[O_FIG]
            f[F0] = lo
            f[F0 + 1] = ewma(f[F0 + 1], lo, fc[C_EWMA])
            f[F0 + 2], f[F0 + 3], f[F0 + 4] = grad_norm, beta_t, eps_norm
            S = col[O_SKILL]
            f[S] = ewma(f[S], row_loss(lv_m, levels, k, huber, delta), fc[C_EWMA])
            f[S + 1] = ewma(f[S + 1], row_loss(lv_n, levels, k, huber, delta), fc[C_EWMA])
            mean_share = 0.0
            for o in range(k):
                mean_share += share[o]
            f[S + 2] = mean_share / k
            flags[FL_DRIFT, r] = page_hinkley(f, i, b, col, k, p, True, lo, fc[C_PH_WINDOW])
            for o in range(k):
                pred[r, o] = lv_s[o]
            loss[r] = lo
        step[r] = i[col[O_STEP]]
        if kind != LINEAR:
            if f[col[O_SEEN]] > 0:
                scales(f, col, nscale, s)
                features(f, xr, cfg, fc, col, s, phi)
                predictions(f, cfg, fc, col, s, phi, naive, model, served, share)
                for d in range(dim):
                    forecast[r, d] = f[col[O_LAST] + d] + served[d]
            else:
                forecast[r, :] = nan
