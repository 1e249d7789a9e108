"""The steps of one row of the fused tracking kernel (:mod:`models.fused_tracking_kernel`), each the numba
twin of a piece of :mod:`models.tracking`, :mod:`models.functional` (TrackIn) or :mod:`models.drift`, on one
row's views of the packed buffers (``f`` float, ``i`` int64, ``b`` bool). Arithmetic is float64."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from trackin.models.fused_tracking_layout import (
    C_BOUND,
    C_CLIP,
    C_COV_CAP,
    C_FEATURE_CLIP,
    C_FMAX,
    C_FORGET,
    C_MIX_BIAS,
    C_MIX_ETA,
    C_MIX_POWER,
    C_MIX_RHO,
    C_MIX_WARMUP,
    C_SCALE_WARMUP,
    C_STAT_ALPHA,
    C_TINY,
    K_DIM,
    K_IN,
    K_KIND,
    K_LAGS,
    K_MIX,
    K_OUT,
    K_P,
    LEVEL,
    LINEAR,
    O_BETA,
    O_COV,
    O_DCOUNT,
    O_DDELTA,
    O_DEBIAS,
    O_DEN,
    O_DLAST,
    O_DMEAN,
    O_DMIN,
    O_DN,
    O_DRESET,
    O_DTHR,
    O_DTOT,
    O_DWARM,
    O_EPS,
    O_EPS_DECAY,
    O_ETA,
    O_GAMMA,
    O_LAST,
    O_LEARNED,
    O_LR,
    O_MEAN,
    O_MEANW,
    O_MGN,
    O_MIXCOUNT,
    O_MIXM,
    O_MIXN,
    O_MOM,
    O_NAIVE2,
    O_RATE,
    O_RATES,
    O_RESID2,
    O_RULE,
    O_SM2,
    O_SN,
    O_SQ,
    O_STATW,
    O_STEP,
    O_W,
    O_WD,
    TINY,
    TRACK,
)


@njit(cache=True, inline="always")
def clamp(v: float, c: float) -> float:
    """``clamp(v, -c, c)``, NaN kept (as torch.clamp)."""
    if v > c:
        return c
    if v < -c:
        return -c
    return v


@njit(cache=True, inline="always")
def ewma(prev: float, value: float, alpha: float) -> float:
    return value if math.isnan(prev) else prev + alpha * (value - prev)


@njit(cache=True)
def scales(f: np.ndarray, col: np.ndarray, n: int, s: np.ndarray) -> None:
    for j in range(n):
        v = math.sqrt(f[col[O_SM2] + j])
        s[j] = v if v > 0 else 1.0


@njit(cache=True)
def features(
    f: np.ndarray,
    xr: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    s: np.ndarray,
    phi: np.ndarray,
) -> None:
    """Scaled features and the constant 1 (linear: of the inputs, NaN and inf as 0; series: of the rates
    kept, and the last level for ``level``)."""
    clip, kind = fc[C_FEATURE_CLIP], cfg[K_KIND]
    if kind == LINEAR:
        for j in range(cfg[K_IN]):
            v = xr[j]
            phi[j] = clamp((v if math.isfinite(v) else 0.0) / s[j], clip)
    else:
        dim, lags = cfg[K_DIM], cfg[K_LAGS]
        for lag in range(lags):
            for d in range(dim):
                phi[lag * dim + d] = clamp(f[col[O_RATES] + lag * dim + d] / s[d], clip)
        if kind == LEVEL:
            for d in range(dim):
                phi[lags * dim + d] = clamp(f[col[O_LAST] + d] / s[dim + d], clip)
    phi[cfg[K_P] - 1] = 1.0


@njit(cache=True)
def predictions(
    f: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    s: np.ndarray,
    phi: np.ndarray,
    naive: np.ndarray,
    model: np.ndarray,
    served: np.ndarray,
    share: np.ndarray,
) -> None:
    """Naive, model and served predictions (series: rates) from the features, and the model's share."""
    k, p, kind, tiny = cfg[K_OUT], cfg[K_P], cfg[K_KIND], fc[C_TINY]
    w = f[col[O_STATW]]
    learned = f[col[O_LEARNED]] >= fc[C_MIX_WARMUP]
    n = f[col[O_MIXCOUNT]]
    for o in range(k):
        raw = 0.0
        for j in range(p):
            raw += f[col[O_W] + o * p + j] * phi[j]
        if kind == LINEAR:
            mw = f[col[O_MEANW]]
            nv = f[col[O_MEAN] + o] / max(mw, tiny) if mw > 0 else 0.0
            dep = s[cfg[K_IN] + o] * raw - nv
        else:
            nv = f[col[O_RATE] + o] if kind == TRACK else 0.0
            dep = s[o] * raw
        if w > 0:
            dep = clamp(dep, fc[C_BOUND] * math.sqrt(f[col[O_NAIVE2] + o] / max(w, tiny)))
        mv = nv + dep
        if cfg[K_MIX]:
            mm, mn = f[col[O_MIXM] + o], f[col[O_MIXN] + o]
            z = fc[C_MIX_ETA] * 2 * n * (mn - mm) / max(mm + mn, tiny) - fc[C_MIX_BIAS]
            sh = 1.0 / (1.0 + math.exp(-z)) if learned else 0.0
        else:
            sh = 1.0
        naive[o], model[o], share[o] = nv, mv, sh
        served[o] = nv + sh * (mv - nv)


@njit(cache=True)
def row_loss(a: np.ndarray, b: np.ndarray, k: int, huber: int, delta: float) -> float:
    total = 0.0
    for o in range(k):
        r = a[o] - b[o]
        if huber:
            r = abs(r)
            total += 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)
        else:
            total += r * r
    return total / k


@njit(cache=True)
def trackin_step(
    f: np.ndarray, i: np.ndarray, b: np.ndarray, col: np.ndarray, cfg: np.ndarray, g: np.ndarray, n: int
) -> tuple[float, float, float]:
    """TrackIn (models.functional.trackin) on one row's weights, in place; returns the figures
    ``(grad_norm, beta_t, eps_norm)``."""
    W, M = col[O_W], col[O_MOM]
    wd = f[col[O_WD]]
    if wd != 0:
        for j in range(n):
            g[j] += wd * f[W + j]
    sq = 0.0
    for j in range(n):
        sq += g[j] * g[j]
    norm = math.sqrt(sq)
    mgn = f[col[O_MGN]]
    if mgn != math.inf:
        scale = min(mgn / norm, 1.0)
        for j in range(n):
            g[j] *= scale
        sq *= scale * scale
    t = i[col[O_STEP]] + 1
    i[col[O_STEP]] = t
    gamma, rule = f[col[O_GAMMA]], i[col[O_RULE]]
    s_cos = 0.0
    if rule == 1:
        msq, dot = 0.0, 0.0
        for j in range(n):
            msq += f[M + j] * f[M + j]
            dot += g[j] * f[M + j]
        s_cos = max(dot / max(math.sqrt(sq * msq), TINY), 0.0)
    msq = 0.0
    for j in range(n):
        m = f[M + j] * gamma + g[j] * (1 - gamma)
        f[M + j] = m
        msq += m * m
    sq_avg = f[col[O_SQ]] * gamma + (1 - gamma) * sq
    f[col[O_SQ]] = sq_avg
    bias = 1 - gamma**t if b[col[O_DEBIAS]] else 1.0
    if rule == 0:
        s = 1.0
    elif rule == 1:
        s = s_cos
    else:
        rho = (msq / (bias * bias)) / max(sq_avg / bias, TINY)
        kappa = (1 - gamma) / (1 + gamma)
        s = min(max((rho - kappa) / max(1 - kappa, TINY), 0.0), 1.0) if kappa < 1 else 0.0
    beta_t = f[col[O_BETA]] * s
    coef, lr = beta_t / bias, f[col[O_LR]]
    for j in range(n):
        f[W + j] -= lr * (g[j] + coef * f[M + j])
    eps_norm = 0.0
    E = col[O_EPS]
    if E >= 0:
        decay, eta = f[col[O_EPS_DECAY]], f[col[O_ETA]]
        esq = 0.0
        for j in range(n):
            e = f[E + j] * decay - eta * g[j]
            f[E + j] = e
            f[W + j] += f[E + j]
            esq += f[E + j] * f[E + j]
        eps_norm = math.sqrt(esq)
    return norm, beta_t, eps_norm


@njit(cache=True)
def learn(
    f: np.ndarray,
    i: np.ndarray,
    b: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    phi: np.ndarray,
    scaled: np.ndarray,
    target: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    work: np.ndarray,
) -> tuple[float, float, float]:
    """The preconditioned step (tracking.learn) and the running statistics of one row that learns."""
    k, p, tiny, lam = cfg[K_OUT], cfg[K_P], fc[C_TINY], fc[C_FORGET]
    C, W = col[O_COV], col[O_W]
    stat_w = f[col[O_STATW]]
    clip_on = f[col[O_LEARNED]] >= 2 and stat_w > 0
    p_phi, gain, residual, g = work[:p], work[p : 2 * p], work[2 * p : 2 * p + k], work[2 * p + k :]
    for o in range(k):
        r = scaled[o]
        for j in range(p):
            r -= f[W + o * p + j] * phi[j]
        if clip_on:
            r = clamp(r, fc[C_CLIP] * math.sqrt(f[col[O_RESID2] + o] / max(stat_w, tiny)))
        residual[o] = r
    # P phi, P symmetric: row c of P scaled by phi_c, accumulated over c (the sums in the order of a row's
    # dot product, each independent of the others: vectorised without reordering any sum)
    for a in range(p):
        p_phi[a] = 0.0
    for c in range(p):
        pc = phi[c]
        for a in range(p):
            p_phi[a] += f[C + c * p + a] * pc
    quad = 0.0
    for a in range(p):
        quad += phi[a] * p_phi[a]
    denom = lam + quad
    for a in range(p):
        gain[a] = p_phi[a] / denom
    for o in range(k):
        for j in range(p):
            g[o * p + j] = -(residual[o] * gain[j])
    stats = trackin_step(f, i, b, col, cfg, g, k * p)
    # (P - P phi phi^T P / denom) / lam, its largest diagonal entry capped. (p_phi_a p_phi_c) / denom is
    # symmetric to the bit, so a symmetric P stays symmetric (the torch round symmetrises explicitly: the
    # same values up to rounding). The diagonal first, then one contiguous pass.
    inv_lam, inv_denom = 1.0 / lam, 1.0 / denom
    peak = -math.inf
    for a in range(p):
        peak = max(peak, (f[C + a * p + a] - p_phi[a] * p_phi[a] * inv_denom) * inv_lam)
    factor = inv_lam * (fc[C_COV_CAP] / max(peak, fc[C_COV_CAP]))
    for a in range(p):
        pa = p_phi[a]
        for c in range(p):
            f[C + a * p + c] = (f[C + a * p + c] - pa * p_phi[c] * inv_denom) * factor
    keep, rho, power = 1 - fc[C_STAT_ALPHA], fc[C_MIX_RHO], fc[C_MIX_POWER]
    for o in range(k):
        f[col[O_RESID2] + o] = f[col[O_RESID2] + o] * keep + residual[o] * residual[o]
        dn, dm = target[o] - naive[o], target[o] - model[o]
        f[col[O_NAIVE2] + o] = f[col[O_NAIVE2] + o] * keep + dn * dn
        f[col[O_MIXM] + o] = rho * f[col[O_MIXM] + o] + abs(dm) ** power
        f[col[O_MIXN] + o] = rho * f[col[O_MIXN] + o] + abs(dn) ** power
    f[col[O_STATW]] = f[col[O_STATW]] * keep + 1
    f[col[O_MIXCOUNT]] = rho * f[col[O_MIXCOUNT]] + 1
    f[col[O_LEARNED]] = f[col[O_LEARNED]] + 1
    return stats


@njit(cache=True)
def update_scales(f: np.ndarray, fc: np.ndarray, col: np.ndarray, values: np.ndarray, n: int) -> bool:
    """Mean squares over the first SCALE_WARMUP observations (a square past the dtype's range counts 0);
    returns whether they moved."""
    count = f[col[O_SN]]
    if count >= fc[C_SCALE_WARMUP]:
        return False
    count += 1
    for j in range(n):
        sq = values[j] * values[j]
        if not sq <= fc[C_FMAX]:
            sq = 0.0
        m2 = f[col[O_SM2] + j]
        f[col[O_SM2] + j] = m2 + (sq - m2) / count
    f[col[O_SN]] = count
    return True


@njit(cache=True)
def page_hinkley(
    f: np.ndarray,
    i: np.ndarray,
    b: np.ndarray,
    col: np.ndarray,
    k: int,
    p: int,
    active: bool,
    loss: float,
    window: float,
) -> bool:
    """Page-Hinkley (models.drift.page_hinkley) on one row; clears the momentum on an alarm if asked."""
    total, minimum = f[col[O_DTOT]], f[col[O_DMIN]]
    if not b[col[O_DEN]]:
        return False
    n = i[col[O_DN]]
    armed = active and n >= i[col[O_DWARM]]
    if armed:
        mean = f[col[O_DMEAN]]
        total = total + (loss / max(mean, TINY) - (1 + f[col[O_DDELTA]]))
        f[col[O_DTOT]] = total
    if not minimum <= total:  # torch.minimum: NaN wins
        f[col[O_DMIN]] = total
    minimum = f[col[O_DMIN]]
    if active:
        n += 1
        i[col[O_DN]] = n
        mean = f[col[O_DMEAN]]
        f[col[O_DMEAN]] = mean + (loss - mean) / min(max(n, 1), window)
    alarm = armed and f[col[O_DTOT]] - minimum > f[col[O_DTHR]]
    if alarm:
        i[col[O_DN]] = 0
        f[col[O_DMEAN]] = 0.0
        f[col[O_DTOT]] = 0.0
        f[col[O_DMIN]] = 0.0
        i[col[O_DCOUNT]] += 1
        i[col[O_DLAST]] = i[col[O_STEP]]
        if b[col[O_DRESET]]:
            for j in range(k * p):
                f[col[O_MOM] + j] = 0.0
    return alarm
