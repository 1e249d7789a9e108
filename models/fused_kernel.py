"""The first-order closed-form round as one compiled loop (numba): one more implementation of
:class:`models.round.Round`'s math, not a new definition (docs/engine.md, "Fused kernels").

``observe_rows`` walks a batch's rows in arrival order and steps each row's stream in place on the pool's
packed buffers: features (``linear`` inputs or the ``ar`` window), forward, loss and ``dL/dout``, the
gradient ``dL/dout * [x, 1]``, the non-finite guard, the optimizer step (TrackIn, SGD, Adam, as
:mod:`models.functional` writes them), the figures, the ``ar`` window, the counters and Page-Hinkley
(:mod:`models.drift`). A stream that appears twice in a batch is simply stepped twice, in order: the rows of
one stream follow each other exactly as the torch path's rounds do.

Values are stored in the pool's dtype; scalar arithmetic runs in float64 (so float32 results round at the
stores, and agree with the torch path to float32 tolerances). Every setting is read from the row's own
columns. Where each column lives is passed in ``cfg`` (an int64 array indexed by the constants below),
so one compiled function serves every pool of a dtype: two signatures in all (float32, float64).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["CFG_SIZE", "observe_rows"]

# ----- cfg: the pool's structure and where its columns are (indices into the int64 ``cfg`` array) --------
FAMILY, LOSS, OPT, N_IN, N_OUT, N_PARAMS, WINDOW, DIM = 0, 1, 2, 3, 4, 5, 6, 7
BUF0, BUF1, RESET_BUF = 8, 9, 10  # momentum / exp_avg, eps / exp_avg_sq, the buffer a drift clears (-1: none)
SQ_AVG, FIG, HUBER, AR_WINDOW = 11, 12, 13, 14
DRIFT_MEAN, DRIFT_TOTAL, DRIFT_MIN, DRIFT_DELTA, DRIFT_THRESHOLD = 15, 16, 17, 18, 19
STEP, BETA_RULE, AR_FILLED, NONFINITE, DRIFT_N, DRIFT_COUNT, DRIFT_LAST, DRIFT_WARMUP = (
    20, 21, 22, 23, 24, 25, 26, 27,
)  # fmt: skip
DEBIAS, DRIFT_ENABLED, DRIFT_RESET = 28, 29, 30
HYPER = 31  # float hyperparameter columns, in the optimizer's order (FLOAT_HYPERS of models.fused_round)
N_HYPER = 7
WEIGHT_DECAY, MAX_GRAD_NORM = 5, 6  # every optimizer's last two
CFG_SIZE = HYPER + N_HYPER

LINEAR, AR_LEVEL, AR_DELTA = 0, 1, 2
MSE, HUBER_LOSS, BCE = 0, 1, 2
TRACKIN, SGD, ADAM = 0, 1, 2
CONSTANT, COS, NORM = 0, 1, 2  # models.functional.BETA_RULES

_TINY = 1e-30
_EWMA = 0.05  # models.figures.LOSS_EWMA_ALPHA
_MEAN_WINDOW = 500  # models.drift.MEAN_WINDOW


@njit(cache=True)
def _hyper(frow: np.ndarray, cfg: np.ndarray, k: int) -> float:
    """The row's ``k``-th float hyperparameter (the optimizer's order; see models.fused_round)."""
    return float(frow[cfg[HYPER + k]])


@njit(cache=True)
def _affine(theta: np.ndarray, feats: np.ndarray, out: np.ndarray, n_in: int, n_out: int) -> None:
    """``out = W feats + b`` with ``theta = [W (row-major [out, in]), b]``, accumulated in float64."""
    for o in range(n_out):
        acc = 0.0
        base = o * n_in
        for j in range(n_in):
            acc += float(theta[base + j]) * float(feats[j])
        out[o] = acc + float(theta[n_out * n_in + o])


@njit(cache=True)
def _ar_features(frow: np.ndarray, cfg: np.ndarray, feats: np.ndarray) -> None:
    """An ``ar`` model's inputs from the window in ``frow`` (levels, or the successive changes)."""
    a, w, d = cfg[AR_WINDOW], cfg[WINDOW], cfg[DIM]
    if cfg[FAMILY] == AR_LEVEL:
        for k in range(w * d):
            feats[k] = frow[a + k]
    else:
        for k in range((w - 1) * d):
            feats[k] = frow[a + d + k] - frow[a + k]


@njit(cache=True)
def _loss_and_dout(
    kind: int, out: np.ndarray, target: np.ndarray, delta: float, dout: np.ndarray, n_out: int
) -> float:
    """The loss (mean over outputs) and ``dL/dout`` into ``dout``, as :mod:`models.losses` defines them."""
    total = 0.0
    for o in range(n_out):
        z, t = out[o], float(target[o])
        if kind == MSE:
            r = z - t
            total += r * r
            dout[o] = r * (2.0 / n_out)
        elif kind == HUBER_LOSS:
            r = z - t
            a = abs(r)
            total += 0.5 * r * r if a <= delta else delta * (a - 0.5 * delta)
            dout[o] = (min(max(r, -delta), delta) if r == r else r) / n_out
        else:
            total += max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))
            dout[o] = (1.0 / (1.0 + math.exp(-z)) - t) / n_out
    return total / n_out


@njit(cache=True)
def _prepared(
    frow: np.ndarray, grad: np.ndarray, g: np.ndarray, n_params: int, wd: float, max_norm: float
) -> tuple[float, float]:
    """Weight decay and clipping into ``g`` (models.functional._prepared_grads): returns the squared norm
    after clipping and the norm before it (the figure)."""
    sq = 0.0
    for k in range(n_params):
        v = float(grad[k])
        if wd != 0.0:
            v += wd * float(frow[k])
        g[k] = v
        sq += v * v
    norm = math.sqrt(sq)
    if max_norm < math.inf and norm > max_norm:
        scale = max_norm / norm
        for k in range(n_params):
            g[k] *= scale
        sq *= scale * scale
    return sq, norm


@njit(cache=True)
def _trackin(
    frow: np.ndarray, irow: np.ndarray, brow: np.ndarray, cfg: np.ndarray, g: np.ndarray, g_sq: float
) -> tuple[float, float]:
    """One TrackIn step in place on a row (models.functional.trackin); returns beta_t and ||eps||."""
    n, m0, e0 = cfg[N_PARAMS], cfg[BUF0], cfg[BUF1]
    lr, gamma, beta = _hyper(frow, cfg, 0), _hyper(frow, cfg, 1), _hyper(frow, cfg, 2)
    eta, eps_decay = _hyper(frow, cfg, 3), _hyper(frow, cfg, 4)
    rule = irow[cfg[BETA_RULE]]
    irow[cfg[STEP]] += 1
    t = irow[cfg[STEP]]
    s_cos = 0.0
    if rule == COS:
        m_sq, dot = 0.0, 0.0
        for k in range(n):
            m = float(frow[m0 + k])
            m_sq += m * m
            dot += g[k] * m
        s_cos = max(dot / max(math.sqrt(g_sq * m_sq), _TINY), 0.0)
    m_sq = 0.0
    for k in range(n):
        m = gamma * float(frow[m0 + k]) + (1.0 - gamma) * g[k]
        frow[m0 + k] = m
        m = float(frow[m0 + k])
        m_sq += m * m
    sa = cfg[SQ_AVG]
    frow[sa] = gamma * float(frow[sa]) + (1.0 - gamma) * g_sq
    bias = 1.0 - gamma**t if brow[cfg[DEBIAS]] else 1.0
    if rule == CONSTANT:
        beta_t = beta
    elif rule == COS:
        beta_t = beta * s_cos
    else:
        rho = (m_sq / (bias * bias)) / max(float(frow[sa]) / bias, _TINY)
        kappa = (1.0 - gamma) / (1.0 + gamma)
        s_norm = min(max((rho - kappa) / max(1.0 - kappa, _TINY), 0.0), 1.0) if kappa < 1.0 else 0.0
        beta_t = beta * s_norm
    coef = beta_t / bias
    e_sq = 0.0
    for k in range(n):
        p = float(frow[k]) - lr * (g[k] + coef * float(frow[m0 + k]))
        frow[k] = p
        if e0 >= 0:  # the error correction is added to the stored (rounded) parameter, as the core does
            frow[e0 + k] = eps_decay * float(frow[e0 + k]) - eta * g[k]
            e = float(frow[e0 + k])
            e_sq += e * e
            frow[k] = float(frow[k]) + e
    return beta_t, math.sqrt(e_sq)


@njit(cache=True)
def _sgd(frow: np.ndarray, irow: np.ndarray, brow: np.ndarray, cfg: np.ndarray, g: np.ndarray) -> float:
    """One SGD step in place on a row (models.functional.sgd); returns the momentum factor (the figure)."""
    n, m0 = cfg[N_PARAMS], cfg[BUF0]
    lr = _hyper(frow, cfg, 0)
    irow[cfg[STEP]] += 1
    if m0 < 0:
        for k in range(n):
            frow[k] = float(frow[k]) - lr * g[k]
        return 0.0
    mu, keep = _hyper(frow, cfg, 1), 1.0 - _hyper(frow, cfg, 2)
    bias = 1.0 - mu ** irow[cfg[STEP]] if brow[cfg[DEBIAS]] else 1.0
    for k in range(n):
        frow[m0 + k] = mu * float(frow[m0 + k]) + keep * g[k]
        frow[k] = float(frow[k]) - lr * float(frow[m0 + k]) / bias
    return mu


@njit(cache=True)
def _adam(frow: np.ndarray, irow: np.ndarray, cfg: np.ndarray, g: np.ndarray) -> float:
    """One Adam step in place on a row (models.functional.adam); returns beta1 (the figure)."""
    n, m0, v0 = cfg[N_PARAMS], cfg[BUF0], cfg[BUF1]
    lr, b1, b2, eps = _hyper(frow, cfg, 0), _hyper(frow, cfg, 1), _hyper(frow, cfg, 2), _hyper(frow, cfg, 3)
    irow[cfg[STEP]] += 1
    t = irow[cfg[STEP]]
    bias1, bias2_sqrt = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
    for k in range(n):
        frow[m0 + k] = b1 * float(frow[m0 + k]) + (1.0 - b1) * g[k]
        frow[v0 + k] = b2 * float(frow[v0 + k]) + (1.0 - b2) * g[k] * g[k]
        denom = math.sqrt(float(frow[v0 + k])) / bias2_sqrt + eps
        frow[k] = float(frow[k]) - lr / bias1 * float(frow[m0 + k]) / denom
    return b1


@njit(cache=True)
def _page_hinkley(
    frow: np.ndarray, irow: np.ndarray, brow: np.ndarray, cfg: np.ndarray, loss: float, ok: bool
) -> bool:
    """Page-Hinkley on the row's loss (models.drift.page_hinkley), counters and the momentum reset."""
    if not (ok and brow[cfg[DRIFT_ENABLED]]):
        return False
    n_col, mean_c, tot_c, min_c = cfg[DRIFT_N], cfg[DRIFT_MEAN], cfg[DRIFT_TOTAL], cfg[DRIFT_MIN]
    armed = irow[n_col] >= irow[cfg[DRIFT_WARMUP]]
    if armed:
        z = loss / max(float(frow[mean_c]), _TINY) - (1.0 + float(frow[cfg[DRIFT_DELTA]]))
        frow[tot_c] = float(frow[tot_c]) + z
    frow[min_c] = min(float(frow[min_c]), float(frow[tot_c]))
    irow[n_col] += 1
    mean = float(frow[mean_c])
    frow[mean_c] = mean + (loss - mean) / min(max(irow[n_col], 1), _MEAN_WINDOW)
    alarm = armed and float(frow[tot_c]) - float(frow[min_c]) > float(frow[cfg[DRIFT_THRESHOLD]])
    if alarm:
        irow[n_col] = 0
        frow[mean_c] = 0.0
        frow[tot_c] = 0.0
        frow[min_c] = 0.0
        irow[cfg[DRIFT_COUNT]] += 1
        irow[cfg[DRIFT_LAST]] = irow[cfg[STEP]]
        r0 = cfg[RESET_BUF]
        if r0 >= 0 and brow[cfg[DRIFT_RESET]]:
            for k in range(cfg[N_PARAMS]):
                frow[r0 + k] = 0.0
    return alarm


@njit(cache=True)
def observe_rows(
    fbuf: np.ndarray,
    ibuf: np.ndarray,
    bbuf: np.ndarray,
    cfg: np.ndarray,
    slots: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    results: np.ndarray,
    steps: np.ndarray,
    flags: np.ndarray,
) -> None:
    """Step the streams ``slots`` (rows of the packed buffers) once per row, in order, in place.

    ``x``: ``[n, in]`` inputs (``ar``: ``[n, dim]`` arriving values); ``y``: ``[n, out]`` targets (``ar``:
    unused). Outputs, preallocated: ``results`` ``[n, 2 out + 1]`` (pool dtype: the prediction, the loss,
    the ``ar`` forecast; ``[n, out + 1]`` for ``linear``), ``steps`` ``[n]`` int64, ``flags`` ``[4, n]`` bool
    (applied, warming, nonfinite, drift).
    """
    family, loss_kind, opt = cfg[FAMILY], cfg[LOSS], cfg[OPT]
    n_in, n_out, n_params = cfg[N_IN], cfg[N_OUT], cfg[N_PARAMS]
    is_ar = family != LINEAR
    window, dim, aw = cfg[WINDOW], cfg[DIM], cfg[AR_WINDOW]
    feats = np.empty(n_in, fbuf.dtype)
    target = np.empty(n_out, fbuf.dtype)
    out = np.empty(n_out, np.float64)
    dout = np.empty(n_out, np.float64)
    grad = np.empty(n_params, fbuf.dtype)
    g = np.empty(n_params, np.float64)
    cell = np.empty(1, fbuf.dtype)  # rounds a float64 to the pool's dtype
    fig = cfg[FIG]
    for r in range(slots.shape[0]):
        s = slots[r]
        frow, irow, brow = fbuf[s], ibuf[s], bbuf[s]
        ready = True
        if is_ar:
            ready = irow[cfg[AR_FILLED]] >= window
            _ar_features(frow, cfg, feats)
            last0 = aw + (window - 1) * dim
            for d in range(dim):
                target[d] = x[r, d] - frow[last0 + d] if family == AR_DELTA else x[r, d]
        else:
            for j in range(n_in):
                feats[j] = x[r, j]
            for o in range(n_out):
                target[o] = y[r, o]
        _affine(frow, feats, out, n_in, n_out)
        cell[0] = _loss_and_dout(loss_kind, out, target, float(frow[cfg[HUBER]]), dout, n_out)
        loss = float(cell[0])
        finite = math.isfinite(loss)
        for o in range(n_out):
            for j in range(n_in):
                grad[o * n_in + j] = dout[o] * float(feats[j])
            grad[n_out * n_in + o] = dout[o]
        if finite:
            for k in range(n_params):
                if not math.isfinite(grad[k]):
                    finite = False
                    break
        ok = finite and ready
        # ----- predictions (made before learning) -----
        for o in range(n_out):
            if is_ar:
                v = out[o] + float(frow[aw + (window - 1) * dim + o]) if family == AR_DELTA else out[o]
                results[r, o] = v if ready else math.nan
            elif loss_kind == BCE:
                results[r, o] = 1.0 / (1.0 + math.exp(-out[o]))
            else:
                results[r, o] = out[o]
        results[r, n_out] = loss if ready else math.nan
        # ----- the optimizer step and the figures (rows whose step is not taken stay as they were) -----
        if ok:
            wd, max_norm = _hyper(frow, cfg, WEIGHT_DECAY), _hyper(frow, cfg, MAX_GRAD_NORM)
            g_sq, grad_norm = _prepared(frow, grad, g, n_params, wd, max_norm)
            eps_norm = 0.0
            if opt == TRACKIN:
                beta_t, eps_norm = _trackin(frow, irow, brow, cfg, g, g_sq)
            elif opt == SGD:
                beta_t = _sgd(frow, irow, brow, cfg, g)
            else:
                beta_t = _adam(frow, irow, cfg, g)
            prev = float(frow[fig + 1])
            frow[fig] = loss
            frow[fig + 1] = loss if prev != prev else prev + _EWMA * (loss - prev)
            frow[fig + 2] = grad_norm
            frow[fig + 3] = beta_t
            frow[fig + 4] = eps_norm
        nonfinite = not finite if ready else False
        # ----- the ar window (also while warming), its forecast -----
        if is_ar:
            value_finite = True
            for d in range(dim):
                if not math.isfinite(x[r, d]):
                    value_finite = False
            if not ready and not value_finite:
                nonfinite = True
            if (not ready and value_finite) or ok:
                for k in range((window - 1) * dim):
                    frow[aw + k] = frow[aw + dim + k]
                for d in range(dim):
                    frow[aw + (window - 1) * dim + d] = x[r, d]
                irow[cfg[AR_FILLED]] = min(irow[cfg[AR_FILLED]] + 1, window)
            if irow[cfg[AR_FILLED]] >= window:
                _ar_features(frow, cfg, feats)
                _affine(frow, feats, out, n_in, n_out)
                for d in range(dim):
                    level = float(frow[aw + (window - 1) * dim + d]) if family == AR_DELTA else 0.0
                    results[r, n_out + 1 + d] = out[d] + level
            else:
                for d in range(dim):
                    results[r, n_out + 1 + d] = math.nan
        if nonfinite:
            irow[cfg[NONFINITE]] += 1
        flags[3, r] = _page_hinkley(frow, irow, brow, cfg, loss, ok)
        steps[r] = irow[cfg[STEP]]
        flags[0, r] = ok
        flags[1, r] = not ready
        flags[2, r] = nonfinite
