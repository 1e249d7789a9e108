"""The fused CPU kernel of a tracking round: :func:`models.tracking.step` and :class:`TrackingRound`'s frame
(the TrackIn step on the preconditioned gradient, figures, Page-Hinkley) for each row of a round, in one
compiled loop, in place on the pool's packed buffers (docs/engine.md, "Fused tracking kernel").

It is one more implementation of the same math, not a new definition: every constant arrives in ``fc``
from :mod:`models.tracking` and friends, every column offset in ``col`` from the pool's layout, and each
row's hyperparameters are read from its own columns (so any mix of beta rules, debias, weight decay and
clipping within a pool runs here). Arithmetic is float64 whatever the buffer's dtype, except the dense
covariance loops (``P phi``, the step's rank-one update and the fold's: most of a round's work), which run in
the buffer's dtype as the torch round does; results are stored in the buffer's dtype. Strict IEEE order (no
fastmath: the RLS recursion amplifies a changed rounding order past the tests' tolerances, docs/engine.md
"Branch `kernel`").
Each region of a row is taken as a slice and indexed from zero (``w[j]``, not ``f[W + j]``): numba must check
an index that may be negative and wrap it, which kept LLVM from vectorising the dense loops. The two
dense loops (`_p_phi`, `_cov_update`) are written out in blocks of 16 and 8 and compiled with the SLP
vectoriser (`_compile_dense`), which packs each block into vector operations without reordering any sum:
rows of 17 stayed scalar under the loop vectoriser alone, which takes 32 floats per pass. Rows are taken in
order, each reading the state its predecessors left, so a batch that holds a stream twice is one call (the
same as one round per occurrence). Only NumPy arrays and numbers go
in: :mod:`models.fused_tracking` builds them.

Every helper is compiled without numba's reference counting (``_nrt=False``): none allocates, and each slice
it takes would otherwise cost an atomic increment and decrement of the buffer's count that numba's pruning
pass leaves in place across calls (numba issues #2345, #2350: the workaround its maintainers give). Those
pairs were about a quarter of a default round's time (perf: ``NRT_incref`` and ``NRT_decref`` at the top,
docs/engine.md "Reference counts"). Only :func:`tracking_round`, which allocates its scratch, counts them.

One module on purpose: numba's on-disk cache of a function is keyed on its own source file only, so a kernel
compiled with functions of another module would keep their old code from the cache after they change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit
from numba import types as numba_types
from numba.core import cgutils
from numba.core import config as _numba_config
from numba.extending import intrinsic

_F = TypeVar("_F", bound=Callable[..., Any])
_Scalar = float | np.floating[Any]


def _helper(function: _F) -> _F:
    """``njit(cache=True)`` without reference counting (the module's docstring says why)."""
    compiled = njit(cache=True, _nrt=False)(function)  # type: ignore[call-overload]  # not in numba's stubs
    return cast(_F, compiled)


_LINE_BYTES = 64
"""A cache line: the stride of `_prefetch_row`."""
_PREFETCH_INTRINSIC = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
"""LLVM's name for it: opaque pointers from LLVM 15 (numba >= 0.60 bundles LLVM 14 or later)."""


def _prefetch_typed(typingctx: Any, row: Any, index: Any) -> Any:
    """A hint to fetch the cache line of ``row[index]`` for writing into every level (``llvm.prefetch``,
    ``prefetchw`` on x86-64, nothing where the target has none). It never faults and changes no value;
    numba offers no prefetch of its own."""
    del typingctx
    signature = numba_types.void(row, index)
    llvm: Any = cgutils  # numba's code generation helpers: no stubs

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = llvm.get_item_pointer(context, builder, array_type, array, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        hint = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        function = llvm.get_or_insert_function(builder.module, hint, _PREFETCH_INTRINSIC)
        # write, keep in every cache level, data (not instructions)
        builder.call(function, [builder.bitcast(pointer, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


_prefetch: Any = intrinsic(_prefetch_typed)


@njit(cache=True, inline="always")
def _prefetch_row(fbuf: np.ndarray, ibuf: np.ndarray, bbuf: np.ndarray, row: int) -> None:
    """Every cache line of ``row``'s float state, and the first of its int and bool state."""
    f = fbuf[row]
    for e in range(0, f.shape[0], _LINE_BYTES // fbuf.itemsize):
        _prefetch(f, e)
    _prefetch(ibuf[row], 0)
    _prefetch(bbuf[row], 0)


# cfg: int settings of the pool
(
    K_KIND,  # 0 linear, 1 delta, 2 level, 3 track
    K_IN,  # linear: inputs
    K_OUT,  # outputs (series: dim)
    K_P,  # features and the constant 1
    K_LAGS,
    K_DIM,
    K_NSCALE,
    K_STANDARDIZE,
    K_MIX,
    K_HUBER,
    K_EPS,  # the pool keeps TrackIn's eps buffer
    K_HEADS,  # RLS heads: their forgetting factors follow the constants in ``fc``
    K_PREFETCH,  # 1: prefetch each next row's state (set per call by the round: `tracking_round`)
    N_CFG,
) = range(14)
# fc: float settings and constants, then the heads' forgetting factors (``fc[N_FC + h]``)
(
    C_HEAD_RHO,
    C_TINY,  # the buffer dtype's smallest normal
    C_FMAX,  # the buffer dtype's largest finite value
    C_CLIP,
    C_STAT_CLIP,
    C_FEATURE_CLIP,
    C_BOUND,
    C_COV_CAP,
    C_STAT_ALPHA,
    C_SCALE_WARMUP,
    C_MIX_RHO,
    C_MIX_ETA,
    C_MIX_BIAS,
    C_MIX_POWER,
    C_MIX_WARMUP,
    C_EWMA,
    C_PH_WINDOW,
    C_PRIOR,
    C_SCALE_POOL,
    N_FC,
) = range(20)
# col: column offsets (float buffer unless noted; -1 where the pool has none)
(
    O_W,
    O_MOM,
    O_EPS,
    O_SQ,
    O_FIG,  # last loss, loss EWMA, grad norm, beta_t, ||eps||
    O_LR,
    O_GAMMA,
    O_BETA,
    O_ETA,
    O_EPS_DECAY,
    O_WD,
    O_MGN,
    O_RULE,  # int
    O_DEBIAS,  # bool
    O_HD,
    O_COV,
    O_SM2,
    O_SN,
    O_RESID2,
    O_NAIVE2,
    O_STATW,
    O_MIXM,
    O_MIXN,
    O_MIXCOUNT,
    O_LEARNED,
    O_SKILL,  # model loss EWMA, naive loss EWMA, mix weight
    O_HLOSS,  # the heads' discounted squared errors [heads * k]
    O_HS2,  # the best head's running squared error [k]
    O_MEAN,
    O_MEANW,
    O_LAST,
    O_TS,
    O_SEEN,
    O_RATE,
    O_RATES,
    O_NONFIN,  # int
    O_DMEAN,
    O_DTOT,
    O_DMIN,
    O_DDELTA,
    O_DTHR,
    O_DN,  # int
    O_DCOUNT,  # int
    O_DLAST,  # int
    O_DWARM,  # int
    O_DEN,  # bool
    O_DRESET,  # bool
    O_STEP,  # int
    N_COL,
) = range(49)
# flags: per-row outcomes, one row of ``flags [N_FLAGS, n]`` each
FL_WARMING, FL_DRIFT, FL_APPLIED, FL_NONFINITE, N_FLAGS = range(5)

_TINY = 1e-30  # models.functional's guard against 0 / 0
_LINEAR, _DELTA, _LEVEL, _TRACK = range(4)


@njit(cache=True, inline="always")
def _clamp(v: float, c: float) -> float:
    """``clamp(v, -c, c)``, NaN kept (as torch.clamp)."""
    if v > c:
        return c
    if v < -c:
        return -c
    return v


@njit(cache=True, inline="always")
def _ewma(prev: float, value: float, alpha: float) -> float:
    return value if math.isnan(prev) else prev + alpha * (value - prev)


@_helper
def _scales(f: np.ndarray, cfg: np.ndarray, fc: np.ndarray, col: np.ndarray, n: int, s: np.ndarray) -> None:
    _scales_of(f[col[O_SM2] : col[O_SM2] + n], f[col[O_SN]], cfg, fc, n, s)


@_helper
def _scales_of(m2: np.ndarray, count: float, cfg: np.ndarray, fc: np.ndarray, n: int, s: np.ndarray) -> None:
    """tracking.scales_of: the scales from the mean squares (linear: the inputs pooled in the warm-up)."""
    for j in range(n):
        v = math.sqrt(m2[j])
        s[j] = v if v > 0 else 1.0
    pool = cfg[K_IN] if cfg[K_KIND] == _LINEAR else 0
    if pool < 2 or fc[C_SCALE_POOL] <= 0 or count >= fc[C_SCALE_WARMUP]:
        return
    measured = 0
    for j in range(pool):
        if m2[j] > 0:
            measured += 1
    if measured < 2:
        return
    total = 0.0
    for j in range(pool):
        if m2[j] > 0:
            s[j] = math.log(s[j])  # s holds the logs until the last pass: each taken once, not twice
            total += s[j]
    mean = total / measured
    spread = 0.0
    for j in range(pool):
        if m2[j] > 0:
            spread += (s[j] - mean) ** 2
    spread /= measured - 1
    noise = fc[C_SCALE_POOL] / max(count, 1.0)
    between = max(spread - noise, 0.0)
    w = between / (between + noise)
    for j in range(pool):
        if m2[j] > 0:
            s[j] = math.exp(w * s[j] + (1 - w) * mean)


@_helper
def _features(
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
    if kind == _LINEAR:
        for j in range(cfg[K_IN]):
            v = xr[j]
            phi[j] = _clamp((v if math.isfinite(v) else 0.0) / s[j], clip)
    else:
        dim, lags = cfg[K_DIM], cfg[K_LAGS]
        rates = f[col[O_RATES] : col[O_RATES] + lags * dim]
        for lag in range(lags):
            for d in range(dim):
                phi[lag * dim + d] = _clamp(rates[lag * dim + d] / s[d], clip)
        if kind == _LEVEL:
            for d in range(dim):
                phi[lags * dim + d] = _clamp(f[col[O_LAST] + d] / s[dim + d], clip)
    phi[cfg[K_P] - 1] = 1.0


@_helper
def _predict(
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
    heads: np.ndarray,
    dots: np.ndarray,
) -> None:
    """Naive, model and served predictions (series: rates) from the features, and the model's share.
    ``heads``: room for the heads' shares of one output; ``dots``: each head's ``w . phi`` (``[heads * k]``,
    the learning step's residuals reuse them while the features stay the same)."""
    k, p, kind, tiny, nh = cfg[K_OUT], cfg[K_P], cfg[K_KIND], fc[C_TINY], cfg[K_HEADS]
    weights = f[col[O_W] : col[O_W] + nh * k * p]
    w = f[col[O_STATW]]
    learned = f[col[O_LEARNED]] >= fc[C_MIX_WARMUP]
    n = f[col[O_MIXCOUNT]]
    for o in range(k):
        _head_shares(f, col, k, nh, o, w, tiny, heads)
        raw = 0.0
        for h in range(nh):
            wr = weights[(h * k + o) * p : (h * k + o + 1) * p]
            head = 0.0
            for j in range(p):
                head += wr[j] * phi[j]
            dots[h * k + o] = head
            raw += heads[h] * head
        if kind == _LINEAR:
            mw = f[col[O_MEANW]]
            nv = f[col[O_MEAN] + o] / max(mw, tiny) if mw > 0 else 0.0
            dep = s[cfg[K_IN] + o] * raw - nv
        else:
            nv = f[col[O_RATE] + o] if kind == _TRACK else 0.0
            dep = s[o] * raw
        if w > 0:
            dep = _clamp(dep, fc[C_BOUND] * math.sqrt(f[col[O_NAIVE2] + o] / max(w, tiny)))
        mv = nv + dep
        if cfg[K_MIX]:
            mm, mn = f[col[O_MIXM] + o], f[col[O_MIXN] + o]
            z = fc[C_MIX_ETA] * 2 * n * (mn - mm) / max(mm + mn, tiny) - fc[C_MIX_BIAS]
            sh = 1.0 / (1.0 + math.exp(-z)) if learned else 0.0
        else:
            sh = 1.0
        naive[o], model[o], share[o] = nv, mv, sh
        served[o] = nv + sh * (mv - nv)


@_helper
def _head_shares(
    f: np.ndarray, col: np.ndarray, k: int, nh: int, o: int, w: float, tiny: float, out: np.ndarray
) -> None:
    """The heads' shares of output ``o``: softmax of ``-(L_h - min L) / (2 s2)`` (tracking.head_shares)."""
    L = col[O_HLOSS]
    low = math.inf
    for h in range(nh):
        low = min(low, f[L + h * k + o])
    s2 = max(f[col[O_HS2] + o] / max(w, tiny), tiny)
    total = 0.0
    for h in range(nh):
        e = math.exp(-(f[L + h * k + o] - low) / (2 * s2))
        out[h] = e
        total += e
    for h in range(nh):
        out[h] /= total


@_helper
def _loss(a: np.ndarray, b: np.ndarray, k: int, huber: int, delta: float) -> float:
    total = 0.0
    for o in range(k):
        r = a[o] - b[o]
        if huber:
            r = abs(r)
            total += 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)
        else:
            total += r * r
    return total / k


@_helper
def _trackin(
    f: np.ndarray, i: np.ndarray, b: np.ndarray, col: np.ndarray, g: np.ndarray, n: int
) -> tuple[float, float, float]:
    """TrackIn (models.functional.trackin) on one row's weights, in place; returns the figures
    ``(grad_norm, beta_t, eps_norm)``."""
    w, m = f[col[O_W] : col[O_W] + n], f[col[O_MOM] : col[O_MOM] + n]
    wd = f[col[O_WD]]
    if wd != 0:
        for j in range(n):
            g[j] += wd * w[j]
    t = i[col[O_STEP]] + 1
    i[col[O_STEP]] = t
    gamma, rule, mgn = f[col[O_GAMMA]], i[col[O_RULE]], f[col[O_MGN]]
    keep = 1 - gamma
    # Each sum below is a chain of dependent additions (strict order): one pass carrying all of them costs
    # one chain's latency where a pass per sum cost one each. Without clipping g is final here, so ||g||^2,
    # the cos rule's m . m and g . m, and the new momentum's norm go in one pass, each in its own order.
    sq, old_msq, dot, msq = 0.0, 0.0, 0.0, 0.0
    if mgn == math.inf:
        for j in range(n):
            gj, mo = g[j], m[j]
            sq += gj * gj
            old_msq += mo * mo
            dot += gj * mo
            mj = mo * gamma + gj * keep
            m[j] = mj
            msq += mj * mj
        norm = math.sqrt(sq)
    else:  # clipping scales g by its norm first
        for j in range(n):
            sq += g[j] * g[j]
        norm = math.sqrt(sq)
        scale = min(mgn / norm, 1.0)
        for j in range(n):
            g[j] *= scale
        sq *= scale * scale
        for j in range(n):
            gj, mo = g[j], m[j]
            old_msq += mo * mo
            dot += gj * mo
            mj = mo * gamma + gj * keep
            m[j] = mj
            msq += mj * mj
    s_cos = 0.0
    if rule == 1:
        s_cos = max(dot / max(math.sqrt(sq * old_msq), _TINY), 0.0)
    sq_avg = f[col[O_SQ]] * gamma + keep * sq
    f[col[O_SQ]] = sq_avg
    bias = 1 - gamma**t if b[col[O_DEBIAS]] else 1.0
    if rule == 0:
        s = 1.0
    elif rule == 1:
        s = s_cos
    else:
        rho = (msq / (bias * bias)) / max(sq_avg / bias, _TINY)
        kappa = (1 - gamma) / (1 + gamma)
        s = min(max((rho - kappa) / max(1 - kappa, _TINY), 0.0), 1.0) if kappa < 1 else 0.0
    beta_t = f[col[O_BETA]] * s
    coef, lr = beta_t / bias, f[col[O_LR]]
    for j in range(n):
        w[j] -= lr * (g[j] + coef * m[j])
    eps_norm = 0.0
    E = col[O_EPS]
    if E >= 0:
        e = f[E : E + n]
        decay, eta = f[col[O_EPS_DECAY]], f[col[O_ETA]]
        esq = 0.0
        for j in range(n):
            ej = e[j] * decay - eta * g[j]
            e[j] = ej
            w[j] += e[j]
            esq += e[j] * e[j]
        eps_norm = math.sqrt(esq)
    return norm, beta_t, eps_norm


@_helper
def _p_phi(cov: np.ndarray, phi: np.ndarray, pp: np.ndarray, p: int) -> float:
    """``pp = P phi`` (P symmetric: rows of P scaled by phi's entries and added) and returns ``phi^T P phi``,
    in the buffer's dtype. Sixteen, then eight entries of ``pp`` at a time, summed in registers over every
    column (then the rest one by one): each entry adds its terms in column order, as one entry per pass
    would; written out so that the SLP vectoriser makes each block of 8 one vector operation per column
    (`_compile_dense`), and two blocks per pass so that their chains of additions run side by side."""
    p16 = p - p % 16
    for a0 in range(0, p16, 16):  # two blocks of 8 per pass: their chains of additions side by side
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = np.float32(0.0)
        for c in range(p):
            pc = phi[c]
            r = cov[c * p + a0 : c * p + a0 + 16]
            s0 += r[0] * pc
            s1 += r[1] * pc
            s2 += r[2] * pc
            s3 += r[3] * pc
            s4 += r[4] * pc
            s5 += r[5] * pc
            s6 += r[6] * pc
            s7 += r[7] * pc
            t0 += r[8] * pc
            t1 += r[9] * pc
            t2 += r[10] * pc
            t3 += r[11] * pc
            t4 += r[12] * pc
            t5 += r[13] * pc
            t6 += r[14] * pc
            t7 += r[15] * pc
        o = pp[a0 : a0 + 16]
        o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = s0, s1, s2, s3, s4, s5, s6, s7
        o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = t0, t1, t2, t3, t4, t5, t6, t7
    p8 = p - p % 8
    for a0 in range(p16, p8, 8):
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        for c in range(p):
            pc = phi[c]
            r = cov[c * p + a0 : c * p + a0 + 8]
            s0 += r[0] * pc
            s1 += r[1] * pc
            s2 += r[2] * pc
            s3 += r[3] * pc
            s4 += r[4] * pc
            s5 += r[5] * pc
            s6 += r[6] * pc
            s7 += r[7] * pc
        o = pp[a0 : a0 + 8]
        o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = s0, s1, s2, s3, s4, s5, s6, s7
    for a in range(p8, p):
        s = np.float32(0.0)
        for c in range(p):
            s += cov[c * p + a] * phi[c]
        pp[a] = s
    quad = 0.0
    for a in range(p):
        quad += phi[a] * pp[a]
    return quad


@_helper
def _cov_update(cov: np.ndarray, pp: np.ndarray, p: int, inv_denom: _Scalar, factor: _Scalar) -> None:
    """``P = (P - pp pp^T / denom) * factor`` in the buffer's dtype, sixteen, then eight columns at a time
    down every row (then the rest one by one): each entry's own arithmetic, in its own order, whatever the
    blocking. ``(pp_a pp_c) / denom`` is symmetric to the bit, so a symmetric P stays symmetric."""
    p16 = p - p % 16
    for c0 in range(0, p16, 16):  # one 512-bit vector of float32 per row where the machine has them
        q = pp[c0 : c0 + 16]
        q0, q1, q2, q3, q4, q5, q6, q7 = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
        q8, q9, q10, q11, q12, q13, q14, q15 = q[8], q[9], q[10], q[11], q[12], q[13], q[14], q[15]
        for a in range(p):
            pa = pp[a]
            r = cov[a * p + c0 : a * p + c0 + 16]
            v0, v1, v2, v3, v4, v5, v6, v7 = r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
            v8, v9, v10, v11, v12, v13, v14, v15 = r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]
            r[0] = (v0 - pa * q0 * inv_denom) * factor
            r[1] = (v1 - pa * q1 * inv_denom) * factor
            r[2] = (v2 - pa * q2 * inv_denom) * factor
            r[3] = (v3 - pa * q3 * inv_denom) * factor
            r[4] = (v4 - pa * q4 * inv_denom) * factor
            r[5] = (v5 - pa * q5 * inv_denom) * factor
            r[6] = (v6 - pa * q6 * inv_denom) * factor
            r[7] = (v7 - pa * q7 * inv_denom) * factor
            r[8] = (v8 - pa * q8 * inv_denom) * factor
            r[9] = (v9 - pa * q9 * inv_denom) * factor
            r[10] = (v10 - pa * q10 * inv_denom) * factor
            r[11] = (v11 - pa * q11 * inv_denom) * factor
            r[12] = (v12 - pa * q12 * inv_denom) * factor
            r[13] = (v13 - pa * q13 * inv_denom) * factor
            r[14] = (v14 - pa * q14 * inv_denom) * factor
            r[15] = (v15 - pa * q15 * inv_denom) * factor
    p8 = p - p % 8
    for c0 in range(p16, p8, 8):
        q = pp[c0 : c0 + 8]
        q0, q1, q2, q3, q4, q5, q6, q7 = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
        for a in range(p):
            pa = pp[a]
            r = cov[a * p + c0 : a * p + c0 + 8]
            v0, v1, v2, v3, v4, v5, v6, v7 = r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
            r[0] = (v0 - pa * q0 * inv_denom) * factor
            r[1] = (v1 - pa * q1 * inv_denom) * factor
            r[2] = (v2 - pa * q2 * inv_denom) * factor
            r[3] = (v3 - pa * q3 * inv_denom) * factor
            r[4] = (v4 - pa * q4 * inv_denom) * factor
            r[5] = (v5 - pa * q5 * inv_denom) * factor
            r[6] = (v6 - pa * q6 * inv_denom) * factor
            r[7] = (v7 - pa * q7 * inv_denom) * factor
    for c in range(p8, p):
        qc = pp[c]
        for a in range(p):
            e = a * p + c
            cov[e] = (cov[e] - pp[a] * qc * inv_denom) * factor


@contextlib.contextmanager
def _slp_vectorized() -> Iterator[None]:
    """numba's superword-level vectoriser on for what compiles meanwhile. numba turns it off by default
    (numba PR #8852: LLVM miscompiled some code with it); it is what packs `_p_phi`'s and `_cov_update`'s
    eight written-out entries into vector operations. The loop vectoriser, which numba keeps on, leaves
    rows of 17 scalar: it takes 32 floats per pass. Only these two functions compile with it, and
    ``tests/models/test_fused_tracking.py`` holds their compiled code to the interpreter's run of the same
    Python, bit for bit."""
    config: Any = _numba_config  # its settings are read from the environment: no stubs
    saved = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        config.SLP_VECTORIZE = saved


def _compile_dense() -> None:
    """Compile (or load from numba's cache) `_p_phi` and `_cov_update` for both buffer dtypes, vectorised,
    before any kernel that calls them: a caller compiled later links these, not a scalar compile of its
    own. (Nothing to compile under ``NUMBA_DISABLE_JIT``: the functions are plain Python then.)"""
    if cast(Any, _numba_config).DISABLE_JIT:
        return
    with _slp_vectorized():
        for dtype in (numba_types.float32, numba_types.float64):
            row = numba_types.Array(dtype, 1, "C")
            _p_phi.compile((row, row, row, numba_types.int64))  # type: ignore[attr-defined]
            _cov_update.compile((row, row, numba_types.int64, dtype, dtype))  # type: ignore[attr-defined]


_compile_dense()


@njit(cache=True, inline="always")
def _diagonal_peak(cov: np.ndarray, pp: np.ndarray, p: int, inv_denom: float, inv_lam: float) -> float:
    """The largest diagonal entry of the updated covariance, ``(P_aa - pp_a^2 / denom) / lambda``: four
    running maxima, then the largest of them. The same value as one running maximum (a maximum of finite
    values does not depend on the order), at a quarter of its chain of dependent comparisons, which was
    about a tenth of a default round (five heads of 17)."""
    peak0 = peak1 = peak2 = peak3 = -math.inf
    p4 = p - p % 4
    for a in range(0, p4, 4):
        peak0 = max(peak0, (cov[a * p + a] - pp[a] * pp[a] * inv_denom) * inv_lam)
        b = a + 1
        peak1 = max(peak1, (cov[b * p + b] - pp[b] * pp[b] * inv_denom) * inv_lam)
        b = a + 2
        peak2 = max(peak2, (cov[b * p + b] - pp[b] * pp[b] * inv_denom) * inv_lam)
        b = a + 3
        peak3 = max(peak3, (cov[b * p + b] - pp[b] * pp[b] * inv_denom) * inv_lam)
    for a in range(p4, p):
        peak0 = max(peak0, (cov[a * p + a] - pp[a] * pp[a] * inv_denom) * inv_lam)
    return max(max(peak0, peak1), max(peak2, peak3))


@_helper
def _learn(
    f: np.ndarray,
    i: np.ndarray,
    b: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    phi: np.ndarray,
    phi_t: np.ndarray,
    scaled: np.ndarray,
    target: np.ndarray,
    model: np.ndarray,
    naive: np.ndarray,
    work: np.ndarray,
    pp_t: np.ndarray,
    sc: np.ndarray,
    dots: np.ndarray,
    fresh: bool,
) -> tuple[float, float, float]:
    """The preconditioned step of every head (tracking.learn) and the running statistics of one row that
    learns. ``work``: room for ``heads * (k + k p + 1)`` values; ``phi_t`` (the features), ``pp_t`` (room
    for ``heads * p``) and ``sc`` (two) are of the buffer's dtype: the dense covariance loops run in it.
    ``fresh``: the features are those of :func:`_predict`, whose ``dots`` (``w . phi``) are reused."""
    k, p, tiny, nh = cfg[K_OUT], cfg[K_P], fc[C_TINY], cfg[K_HEADS]
    C = col[O_COV]
    hk = nh * k
    n = hk * p
    stat_w = f[col[O_STATW]]
    clip_on = f[col[O_LEARNED]] >= 2 and stat_w > 0
    residual, g, denoms = work[:hk], work[hk : hk + n], work[hk + n : hk + n + nh]
    weights = f[col[O_W] : col[O_W] + n]
    resid2 = f[col[O_RESID2] : col[O_RESID2] + hk]
    inv_w = 1.0 / max(stat_w, tiny)
    for h in range(nh):
        for o in range(k):
            if fresh:
                dot = dots[h * k + o]
            else:
                w = weights[(h * k + o) * p : (h * k + o + 1) * p]
                dot = 0.0
                for j in range(p):
                    dot += w[j] * phi[j]
            r = scaled[o] - dot
            if clip_on:  # the statistics' residual (the step's is clipped further below)
                r = _clamp(r, fc[C_STAT_CLIP] * math.sqrt(resid2[h * k + o] * inv_w))
            residual[h * k + o] = r
        pp = pp_t[h * p : (h + 1) * p]
        quad = _p_phi(f[C + h * p * p : C + (h + 1) * p * p], phi_t, pp, p)
        denom = fc[N_FC + h] + quad
        denoms[h] = denom
        inv_denom = 1.0 / denom
        for o in range(k):
            r = residual[h * k + o]
            if clip_on:  # the step's (Huber) residual
                r = _clamp(r, fc[C_CLIP] * math.sqrt(resid2[h * k + o] * inv_w))
            r *= inv_denom
            go = g[(h * k + o) * p : (h * k + o + 1) * p]
            for j in range(p):
                go[j] = -(r * pp[j])
    stats = _trackin(f, i, b, col, g, n)
    # (P - P phi phi^T P / denom) / lam, its largest diagonal entry capped: the diagonal first, then one
    # contiguous pass
    for h in range(nh):
        cov, pp = f[C + h * p * p : C + (h + 1) * p * p], pp_t[h * p : (h + 1) * p]
        inv_lam, inv_denom = 1.0 / fc[N_FC + h], 1.0 / denoms[h]
        peak = _diagonal_peak(cov, pp, p, inv_denom, inv_lam)
        sc[0], sc[1] = inv_denom, inv_lam * (fc[C_COV_CAP] / max(peak, fc[C_COV_CAP]))
        _cov_update(cov, pp, p, sc[0], sc[1])
    keep, rho, power, head_rho = 1 - fc[C_STAT_ALPHA], fc[C_MIX_RHO], fc[C_MIX_POWER], fc[C_HEAD_RHO]
    L = col[O_HLOSS]
    for o in range(k):
        best = 0  # the head the shares trusted most (the first of equals, as torch.argmin)
        for h in range(1, nh):
            if f[L + h * k + o] < f[L + best * k + o]:
                best = h
        rb = residual[best * k + o]
        f[col[O_HS2] + o] = f[col[O_HS2] + o] * keep + rb * rb
        for h in range(nh):
            r = residual[h * k + o]
            resid2[h * k + o] = resid2[h * k + o] * keep + r * r
            f[L + h * k + o] = f[L + h * k + o] * head_rho + r * r
        dn, dm = target[o] - naive[o], target[o] - model[o]
        f[col[O_NAIVE2] + o] = f[col[O_NAIVE2] + o] * keep + dn * dn
        f[col[O_MIXM] + o] = rho * f[col[O_MIXM] + o] + _power(abs(dm), power)
        f[col[O_MIXN] + o] = rho * f[col[O_MIXN] + o] + _power(abs(dn), power)
    f[col[O_STATW]] = f[col[O_STATW]] * keep + 1
    f[col[O_MIXCOUNT]] = rho * f[col[O_MIXCOUNT]] + 1
    f[col[O_LEARNED]] = f[col[O_LEARNED]] + 1
    return stats


@njit(cache=True, inline="always")
def _power(v: float, power: float) -> float:
    """``v ** power``, without the call to ``pow`` at the usual powers."""
    if power == 1.0:
        return v
    if power == 2.0:
        return v * v
    return math.pow(v, power)


@_helper
def _update_scales(f: np.ndarray, fc: np.ndarray, col: np.ndarray, values: np.ndarray, n: int) -> bool:
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


@_helper
def _fold(
    f: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    s_old: np.ndarray,
    s: np.ndarray,
    q: np.ndarray,
    rr: np.ndarray,
    c: np.ndarray,
    cj_col: np.ndarray,
    gc: np.ndarray,
    moved: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Every head re-expressed in the new scales ``s`` (tracking.fold): weights ``W * r q'``, covariances
    ``P * q q'``, the prior left in the old scales moved to the new ones, the residual statistics ``* r^2``.

    Each of the prior's rank-one steps is `_cov_update` in the buffer's dtype, as the torch fold runs it
    (``(col_a col_b) (c g)``: the same math, rounded once less; symmetric to the bit): it was a float64
    loop over rows of 17 that LLVM left scalar, two thirds of a new stream's step (docs/engine.md,
    "Sixteenth session"). Scratch: ``q``, ``c``, ``acc`` (``p``), ``cj_col`` (``p``, the buffer's dtype),
    ``gc`` (3, the buffer's dtype), ``rr`` (``k``), ``moved`` (``k p``)."""
    k, p, nh, kind = cfg[K_OUT], cfg[K_P], cfg[K_HEADS], cfg[K_KIND]
    dim, lags = cfg[K_DIM], cfg[K_LAGS]
    for j in range(p - 1):
        if kind == _LINEAR:
            a = j
        elif j < lags * dim:
            a = j % dim
        else:
            a = dim + j - lags * dim
        q[j] = s[a] / s_old[a]
    q[p - 1] = 1.0
    for o in range(k):
        a = cfg[K_IN] + o if kind == _LINEAR else o
        rr[o] = s_old[a] / s[a]
    W, C, t = col[O_W], col[O_COV], f[col[O_LEARNED]]
    for h in range(nh):
        cov = f[C + h * p * p : C + (h + 1) * p * p]
        w = f[W + h * k * p : W + (h + 1) * k * p]
        for o in range(k):
            for j in range(p):
                w[o * p + j] = w[o * p + j] * (q[j] * rr[o])
                moved[o * p + j] = w[o * p + j]
        for a in range(p):
            for b in range(p):
                cov[a * p + b] = cov[a * p + b] * (q[a] * q[b])
        decay = fc[N_FC + h] ** t
        for j in range(p):
            c[j] = decay / fc[C_PRIOR] * (1 - 1 / (q[j] * q[j]))
        for j in range(p):
            if c[j] == 0.0:  # q_j = 1: the update would leave a finite P as it is, to the bit
                continue
            g = 1 / (1 + c[j] * cov[j * p + j])
            gc[0], gc[1], gc[2] = c[j] * g, g, 1.0  # in the buffer's dtype
            for a in range(p):
                cj_col[a] = cov[a * p + j]
            # P - (col_a col_b) c g: symmetric to the bit, as the step keeps P (no symmetrising)
            _cov_update(cov, cj_col, p, gc[0], gc[2])
            for a in range(p):  # row and column j without the cancellation: P_aj / (1 + c P_jj)
                cov[a * p + j] = cj_col[a] * gc[1]
                cov[j * p + a] = cj_col[a] * gc[1]
        for o in range(k):  # W - (moved c) P by rows of P (symmetric): each sum in column order, as before
            for a in range(p):
                acc[a] = 0.0
            for j in range(p):
                mc = moved[o * p + j] * c[j]
                for a in range(p):
                    acc[a] += mc * cov[j * p + a]
            for a in range(p):
                w[o * p + a] = w[o * p + a] - acc[a]
    L, R2 = col[O_HLOSS], col[O_RESID2]
    for o in range(k):
        r2 = rr[o] * rr[o]
        f[col[O_HS2] + o] = f[col[O_HS2] + o] * r2
        for h in range(nh):
            f[R2 + h * k + o] = f[R2 + h * k + o] * r2
            f[L + h * k + o] = f[L + h * k + o] * r2


@_helper
def _drift(
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
        total = total + (loss / max(mean, _TINY) - (1 + f[col[O_DDELTA]]))
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


@_helper
def _rescale(
    f: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    values: np.ndarray,
    nscale: int,
    s: np.ndarray,
    s_old: np.ndarray,
    m2_old: np.ndarray,
    fq: np.ndarray,
    fr: np.ndarray,
    fcv: np.ndarray,
    fcol: np.ndarray,
    fgc: np.ndarray,
    fmoved: np.ndarray,
    facc: np.ndarray,
) -> bool:
    """The scales take ``values`` (while they are measured) and every head is folded into them; ``s``: the
    new scales. Returns whether they moved."""
    for j in range(nscale):
        m2_old[j] = f[col[O_SM2] + j]
    n_old = f[col[O_SN]]
    if not (cfg[K_STANDARDIZE] and _update_scales(f, fc, col, values, nscale)):
        return False
    _scales(f, cfg, fc, col, nscale, s)
    _scales_of(m2_old, n_old, cfg, fc, nscale, s_old)
    for j in range(nscale):  # a scale not measured before takes the new one (tracking.fold)
        if not m2_old[j] > 0:
            s_old[j] = s[j]
    _fold(f, cfg, fc, col, s_old, s, fq, fr, fcv, fcol, fgc, fmoved, facc)
    return True


@njit(cache=True, nogil=True, inline="always")
def _counting_pass(
    slots: np.ndarray, src: np.ndarray, dst: np.ndarray, shift: int, mask: int, buckets: int
) -> None:
    """``dst``: the rows ``src`` stably sorted by the digit ``(slot >> shift) & mask`` of their slot."""
    starts = np.zeros(buckets + 1, dtype=np.int64)
    for q in range(src.shape[0]):
        starts[((slots[src[q]] >> shift) & mask) + 1] += 1
    for j in range(buckets):
        starts[j + 1] += starts[j]
    for q in range(src.shape[0]):
        row = src[q]
        digit = (slots[row] >> shift) & mask
        dst[starts[digit]] = row
        starts[digit] += 1


@njit(cache=True, nogil=True)
def slot_order_into(slots: np.ndarray, nslots: int, order: np.ndarray) -> None:
    """``order``: the row indices by slot, each slot's rows in their order: a stable sort. One counting
    pass (count, then place: about 9 us for 4,000 rows where NumPy's stable argsort took 160 us) where the
    slots are few beside the rows; else a radix sort, two or more counting passes over digits of at most 11
    bits, whose buckets stay as few as the rows: one pass over 131,072 slots took 78 us for 1,024 rows, and
    over 1,048,576 slots 819 us."""
    n = slots.shape[0]
    if nslots <= max(2 * n, 2048):
        _counting_pass(slots, np.arange(n), order, 0, -1, nslots)
        return
    bits = 0
    while (1 << bits) < nslots:
        bits += 1
    passes = (bits + 10) // 11
    width = (bits + passes - 1) // passes
    src, dst = np.arange(n), np.empty(n, dtype=np.int64)
    for k in range(passes):  # least significant digit first; each pass is stable, so the sort is
        _counting_pass(slots, src, dst, k * width, (1 << width) - 1, 1 << width)
        src, dst = dst, src
    order[:] = src


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
    order: np.ndarray,
) -> None:
    """One observation per row, in place on the buffers ``fbuf``, ``ibuf``, ``bbuf``: the rows in
    ``order`` (row indices, each stream's in its arrival order; empty: every row, ``0 .. n-1``). A call
    touches only its rows' slots and outcomes, so calls on disjoint streams may run at once.

    ``x``: inputs (series: the arriving values), ``y``: targets (linear; series ``[n, 0]``), ``ts``: the
    series' times (NaN: one unit after the previous value). Outcomes, by row: ``pred`` (served, NaN where
    no step), ``loss``, ``forecast`` (series: the next value, NaN before the first), ``step`` and ``flags``.
    """
    k, p, kind, nscale = cfg[K_OUT], cfg[K_P], cfg[K_KIND], cfg[K_NSCALE]
    dim = cfg[K_DIM]
    s = np.empty(nscale)
    phi = np.empty(p)
    naive, model, served, share = np.empty(k), np.empty(k), np.empty(k), np.empty(k)
    scaled, target, values = np.empty(k), np.empty(k), np.empty(nscale)
    lv_s, lv_m, lv_n = np.empty(k), np.empty(k), np.empty(k)
    nh = cfg[K_HEADS]
    work = np.empty(nh * (k + k * p + 1))
    phi_t, pp_t, sc = np.empty(p, fbuf.dtype), np.empty(nh * p, fbuf.dtype), np.empty(2, fbuf.dtype)
    heads, dots = np.empty(nh), np.empty(nh * k)
    s_old, m2_old, fq, fr = np.empty(nscale), np.empty(nscale), np.empty(p), np.empty(k)
    fcv, fcol, fgc = np.empty(p), np.empty(p, fbuf.dtype), np.empty(3, fbuf.dtype)
    fmoved, facc = np.empty(k * p), np.empty(p)
    nan = math.nan
    ordered = order.shape[0] > 0
    rows = order.shape[0] if ordered else slots.shape[0]
    prefetch = cfg[K_PREFETCH] > 0
    for q in range(rows):
        r = order[q] if ordered else q
        row = slots[r]
        f, i, b = fbuf[row], ibuf[row], bbuf[row]
        if prefetch and q + 1 < rows:  # the next row's state on its way while this one is stepped
            _prefetch_row(fbuf, ibuf, bbuf, slots[order[q + 1] if ordered else q + 1])
        xr = x[r]
        finite = True
        for j in range(xr.shape[0]):
            finite = finite and math.isfinite(xr[j])
        first = False
        now, last_ts, gap = 0.0, 0.0, 1.0
        if kind == _LINEAR:
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
            fresh, rescaled = True, False
            if kind == _LINEAR:
                # the inputs' scales take this input before it is predicted from (tracking.step): a
                # feature is never a multiple of the scales it is divided by (no Cauchy ratio x_2 / x_1)
                for o in range(k):
                    target[o] = y[r, o]
                for j in range(cfg[K_IN]):
                    values[j] = xr[j]
                for o in range(k):
                    values[cfg[K_IN] + o] = y[r, o]
                rescaled = _rescale(
                    f, cfg, fc, col, values, nscale, s, s_old, m2_old, fq, fr, fcv, fcol, fgc, fmoved, facc
                )
            if not rescaled:  # (a rescale leaves the new scales in s)
                _scales(f, cfg, fc, col, nscale, s)
            _features(f, xr, cfg, fc, col, s, phi)
            _predict(f, cfg, fc, col, s, phi, naive, model, served, share, heads, dots)
            if kind != _LINEAR:
                gap = now - last_ts
                for d in range(dim):
                    target[d] = (xr[d] - f[col[O_LAST] + d]) / gap
                    values[d] = target[d]
                if kind == _LEVEL:
                    for d in range(dim):
                        values[dim + d] = xr[d]
                if _rescale(
                    f, cfg, fc, col, values, nscale, s, s_old, m2_old, fq, fr, fcv, fcol, fgc, fmoved, facc
                ):
                    _features(f, xr, cfg, fc, col, s, phi)  # the step learns in the scales with this rate
                    fresh = False
            for o in range(k):
                if kind == _LINEAR:
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
            phi_t[:] = phi
            grad_norm, beta_t, eps_norm = _learn(
                f, i, b, cfg, fc, col, phi, phi_t, scaled, target, model, naive, work, pp_t, sc, dots, fresh
            )
            if kind == _LINEAR:
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
            lo = _loss(lv_s, levels, k, huber, delta)
            F0 = col[O_FIG]
            f[F0] = lo
            f[F0 + 1] = _ewma(f[F0 + 1], lo, fc[C_EWMA])
            f[F0 + 2], f[F0 + 3], f[F0 + 4] = grad_norm, beta_t, eps_norm
            S = col[O_SKILL]
            f[S] = _ewma(f[S], _loss(lv_m, levels, k, huber, delta), fc[C_EWMA])
            f[S + 1] = _ewma(f[S + 1], _loss(lv_n, levels, k, huber, delta), fc[C_EWMA])
            mean_share = 0.0
            for o in range(k):
                mean_share += share[o]
            f[S + 2] = mean_share / k
            flags[FL_DRIFT, r] = _drift(f, i, b, col, nh * k, p, True, lo, fc[C_PH_WINDOW])
            for o in range(k):
                pred[r, o] = lv_s[o]
            loss[r] = lo
        step[r] = i[col[O_STEP]]
        if kind != _LINEAR:
            if f[col[O_SEEN]] > 0:
                _scales(f, cfg, fc, col, nscale, s)
                _features(f, xr, cfg, fc, col, s, phi)
                _predict(f, cfg, fc, col, s, phi, naive, model, served, share, heads, dots)
                for d in range(dim):
                    forecast[r, d] = f[col[O_LAST] + d] + served[d]
            else:
                forecast[r, :] = nan


@njit(cache=True, nogil=True)
def tracking_predict(
    fbuf: np.ndarray,
    slots: np.ndarray,
    x: np.ndarray,
    cfg: np.ndarray,
    fc: np.ndarray,
    col: np.ndarray,
    out: np.ndarray,
) -> None:
    """Served predictions without learning (``/predict``), the buffers left as they are.

    Linear: what :func:`tracking_round` would serve for inputs ``x`` (tracking.linear_served), on a copy of
    the row: the inputs' scales take finite ``x`` as a step's would (the target's own mean square is fed
    back, so its scale stays) and the heads are folded into them. Series (``x`` ignored): the next value one
    time unit ahead, NaN before the first (tracking.forecast). ``out``: ``[n, k]`` (series ``[n, dim]``).
    """
    k, p, kind, nscale, nin = cfg[K_OUT], cfg[K_P], cfg[K_KIND], cfg[K_NSCALE], cfg[K_IN]
    s = np.empty(nscale)
    phi = np.empty(p)
    naive, model, served, share = np.empty(k), np.empty(k), np.empty(k), np.empty(k)
    values = np.empty(nscale)
    nh = cfg[K_HEADS]
    heads, dots = np.empty(nh), np.empty(nh * k)
    s_old, m2_old, fq, fr = np.empty(nscale), np.empty(nscale), np.empty(p), np.empty(k)
    fcv, fcol, fgc = np.empty(p), np.empty(p, fbuf.dtype), np.empty(3, fbuf.dtype)
    fmoved, facc = np.empty(k * p), np.empty(p)
    copy = np.empty(fbuf.shape[1], fbuf.dtype)
    for r in range(slots.shape[0]):
        f = fbuf[slots[r]]
        xr = x[r]
        if kind == _LINEAR:
            finite = True
            for j in range(nin):
                finite = finite and math.isfinite(xr[j])
            if finite and cfg[K_STANDARDIZE] and f[col[O_SN]] < fc[C_SCALE_WARMUP]:
                copy[:] = f  # the scales would move: fold a copy
                f = copy
                for j in range(nin):
                    values[j] = xr[j]
                for o in range(k):
                    values[nin + o] = math.sqrt(f[col[O_SM2] + nin + o])
                _rescale(
                    f, cfg, fc, col, values, nscale, s, s_old, m2_old, fq, fr, fcv, fcol, fgc, fmoved, facc
                )
        elif not f[col[O_SEEN]] > 0:
            out[r, :] = math.nan
            continue
        _scales(f, cfg, fc, col, nscale, s)
        _features(f, xr, cfg, fc, col, s, phi)
        _predict(f, cfg, fc, col, s, phi, naive, model, served, share, heads, dots)
        for o in range(k):
            out[r, o] = served[o] if kind == _LINEAR else f[col[O_LAST] + o] + served[o]
