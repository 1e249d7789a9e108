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

The helpers are compiled without numba's reference counting (``_nrt=False``): they allocate nothing, and each
slice of a row they take would otherwise cost an atomic increment and decrement of the buffer's count, which
numba's pruning pass does not remove across calls (numba issues #2345, #2350; the workaround its
maintainers give). Only the two entry points, which allocate their scratch arrays, count references.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit
from numba import types as numba_types
from numba.core import cgutils
from numba.extending import intrinsic

_F = TypeVar("_F", bound=Callable[..., Any])


def _helper(function: _F) -> _F:
    """``njit(cache=True)`` without reference counting (the module's docstring says why)."""
    compiled = njit(cache=True, _nrt=False)(function)  # type: ignore[call-overload]  # not in numba's stubs
    return cast(_F, compiled)


__all__ = ["CFG_SIZE", "observe_rows", "predict_rows"]

_LINE_BYTES = 64
"""A cache line: the stride of `_prefetch_row`. The prefetch is written here as in
:mod:`models.fused_tracking_kernel`, not imported: numba keys a function's on-disk cache on its own source
file, so a kernel built with another module's functions would keep their old code after they change."""
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
# standardisation (models/standardize.py) and the naive mix (models/naive_mix.py): -1 where the pool has none
NORM_X_MEAN, NORM_X_VAR, NORM_Y_MEAN, NORM_Y_VAR, NORM_N = 38, 39, 40, 41, 42
MIX_MODEL, MIX_NAIVE, MIX_N, SKILL = 43, 44, 45, 46  # SKILL: keys.SKILL_FIGURES, one slice
PREFETCH = 47  # 1: prefetch each next row's state (set per call: models.fused_round.PREFETCH_NEXT_ROW)
CFG_SIZE = 48

LINEAR, AR_LEVEL, AR_DELTA = 0, 1, 2
MSE, HUBER_LOSS, BCE = 0, 1, 2
TRACKIN, SGD, ADAM = 0, 1, 2
CONSTANT, COS, NORM = 0, 1, 2  # models.functional.BETA_RULES

_TINY = 1e-30
_EWMA = 0.05  # models.figures.LOSS_EWMA_ALPHA
_MEAN_WINDOW = 500  # models.drift.MEAN_WINDOW
# Copies (numba freezes globals into its cached code; tests/models/test_fused.py checks they agree):
ALPHA, BOUND, CLIP, FEATURE_CLIP = 0.01, 10.0, 3.0, 10.0  # models.standardize
MIX_RHO, MIX_ETA, MIX_BIAS, MIX_POWER, MIX_WARMUP = 0.99, 1.0, 8.0, 1.0, 10  # models.naive_mix


@_helper
def _hyper(frow: np.ndarray, cfg: np.ndarray, k: int) -> float:
    """The row's ``k``-th float hyperparameter (the optimizer's order; see models.fused_round)."""
    return float(frow[cfg[HYPER + k]])


@_helper
def _affine(theta: np.ndarray, feats: np.ndarray, out: np.ndarray, n_in: int, n_out: int) -> None:
    """``out = W feats + b`` with ``theta = [W (row-major [out, in]), b]``, accumulated in float64."""
    for o in range(n_out):
        acc = 0.0
        base = o * n_in
        for j in range(n_in):
            acc += float(theta[base + j]) * float(feats[j])
        out[o] = acc + float(theta[n_out * n_in + o])


@_helper
def _ar_features(frow: np.ndarray, cfg: np.ndarray, feats: np.ndarray) -> None:
    """An ``ar`` model's inputs from the window in ``frow`` (levels, or the successive changes)."""
    a, w, d = cfg[AR_WINDOW], cfg[WINDOW], cfg[DIM]
    if cfg[FAMILY] == AR_LEVEL:
        for k in range(w * d):
            feats[k] = frow[a + k]
    else:
        for k in range((w - 1) * d):
            feats[k] = frow[a + d + k] - frow[a + k]


@_helper
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


@_helper
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


@_helper
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


@_helper
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


@_helper
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


@_helper
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


@_helper
def _clamp(v: float, bound: float) -> float:
    """``v`` within ``+- bound``, NaN kept (as ``torch.clamp``)."""
    return v if v != v else min(max(v, -bound), bound)


@_helper
def _updated(
    frow: np.ndarray,
    m0: int,
    v0: int,
    n: float,
    values: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    cell: np.ndarray,
) -> bool:
    """Running statistics kept at ``m0``/``v0`` of ``frow`` including ``values`` into ``mean``, ``var``
    (rounded to the pool's dtype, as stored; ``standardize.Stats.updated``). Returns: all variances finite."""
    w = max(1.0 / (n + 1.0), ALPHA)
    finite = True
    for j in range(values.shape[0]):
        d = float(values[j]) - float(frow[m0 + j])
        cell[0] = float(frow[m0 + j]) + w * d
        mean[j] = cell[0]
        cell[0] = (1.0 - w) * (float(frow[v0 + j]) + w * d * d)
        var[j] = cell[0]
        finite = finite and math.isfinite(var[j])
    return finite


@_helper
def _std(var: float, tiny: float) -> float:
    """A standard deviation, positive (``standardize.Stats.std``)."""
    return math.sqrt(var + tiny)


@_helper
def _share(frow: np.ndarray, cfg: np.ndarray, steps: int, share: np.ndarray, tiny: float) -> None:
    """The model's share of a series' served forecast, per dim (``naive_mix.weight``)."""
    mm0, mn0 = cfg[MIX_MODEL], cfg[MIX_NAIVE]
    count = float(frow[cfg[MIX_N]])
    on = 1.0 if steps >= MIX_WARMUP else 0.0
    for d in range(share.shape[0]):
        mm, mn = float(frow[mm0 + d]), float(frow[mn0 + d])
        z = MIX_ETA * 2.0 * count * (mn - mm) / max(mm + mn, tiny) - MIX_BIAS
        share[d] = on / (1.0 + math.exp(-z))


@_helper
def _forecast(
    frow: np.ndarray,
    irow: np.ndarray,
    cfg: np.ndarray,
    feats: np.ndarray,
    out: np.ndarray,
    share: np.ndarray,
    dest: np.ndarray,
    tiny: float,
) -> None:
    """An ``ar`` stream's served forecast of the next level from its (full) window into ``dest`` ``[dim]``
    (``Round.ar_level``: standardised, served, mixed with no change)."""
    n_in, n_out, dim = cfg[N_IN], cfg[N_OUT], cfg[DIM]
    last0 = cfg[AR_WINDOW] + (cfg[WINDOW] - 1) * dim
    _ar_features(frow, cfg, feats)
    xm, xv = cfg[NORM_X_MEAN], cfg[NORM_X_VAR]
    if xm >= 0:
        for k in range(n_in):
            d = k % dim
            feats[k] = _clamp(
                (float(feats[k]) - float(frow[xm + d])) / _std(float(frow[xv + d]), tiny), FEATURE_CLIP
            )
    _affine(frow, feats, out, n_in, n_out)
    if cfg[MIX_MODEL] >= 0:
        _share(frow, cfg, irow[cfg[STEP]], share, tiny)
    for d in range(dim):
        v = out[d]
        if xm >= 0 and cfg[LOSS] != BCE:
            v = float(frow[xm + d]) + _std(float(frow[xv + d]), tiny) * _clamp(v, BOUND)
        last = float(frow[last0 + d])
        level = v + last if cfg[FAMILY] == AR_DELTA else v
        if cfg[MIX_MODEL] >= 0:
            level = last + share[d] * (level - last)
        dest[d] = level


@njit(cache=True, nogil=True)
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
    tiny: float,
    order: np.ndarray,
) -> None:
    """Step the streams ``slots`` (rows of the packed buffers) once per row, in order, in place: the rows in
    ``order`` (row indices, each stream's in its arrival order; empty: every row). A call touches only its
    rows' slots and outcomes and holds no GIL, so calls on disjoint streams may run at once
    (:mod:`models.kernel_threads`).

    ``x``: ``[n, in]`` inputs (``ar``: ``[n, dim]`` arriving values); ``y``: ``[n, out]`` targets (``ar``:
    unused). Outputs, preallocated: ``results`` ``[n, 2 out + 1]`` (pool dtype: the prediction, the loss,
    the ``ar`` forecast; ``[n, out + 1]`` for ``linear``), ``steps`` ``[n]`` int64, ``flags`` ``[4, n]`` bool
    (applied, warming, nonfinite, drift). ``tiny``: the smallest normal number of the pool's dtype.

    A standardising pool (``cfg[NORM_N] >= 0``) learns on z-scores and serves in the user's units; a
    series with the naive mix (``cfg[MIX_MODEL] >= 0``) serves the mix and learns its weights.
    """
    family, loss_kind, opt = cfg[FAMILY], cfg[LOSS], cfg[OPT]
    n_in, n_out, n_params = cfg[N_IN], cfg[N_OUT], cfg[N_PARAMS]
    is_ar = family != LINEAR
    window, dim, aw = cfg[WINDOW], cfg[DIM], cfg[AR_WINDOW]
    norm, mix = cfg[NORM_N] >= 0, cfg[MIX_MODEL] >= 0
    norm_target = norm and loss_kind != BCE  # the target's statistics: ar: the series' (x); linear: y's
    xm, xv, ym, yv = cfg[NORM_X_MEAN], cfg[NORM_X_VAR], cfg[NORM_Y_MEAN], cfg[NORM_Y_VAR]
    if is_ar:
        ym, yv = xm, xv
    n_x = dim if is_ar else n_in
    feats = np.empty(n_in, fbuf.dtype)
    target = np.empty(n_out, fbuf.dtype)
    out = np.empty(n_out, np.float64)
    dout = np.empty(n_out, np.float64)
    scratch = np.empty(n_out, np.float64)
    learn = np.empty(n_out, np.float64)
    served = np.empty(n_out, np.float64)
    model_served = np.empty(n_out, np.float64)
    naive = np.zeros(n_out, np.float64)
    share = np.zeros(n_out, np.float64)
    x_mean, x_var = np.empty(n_x, np.float64), np.empty(n_x, np.float64)
    y_mean, y_var = np.empty(n_out, np.float64), np.empty(n_out, np.float64)
    grad = np.empty(n_params, fbuf.dtype)
    g = np.empty(n_params, np.float64)
    cell = np.empty(1, fbuf.dtype)  # rounds a float64 to the pool's dtype
    fig = cfg[FIG]
    ordered = order.shape[0] > 0
    rows = order.shape[0] if ordered else slots.shape[0]
    prefetch = cfg[PREFETCH] > 0
    for q in range(rows):
        r = order[q] if ordered else q
        s = slots[r]
        frow, irow, brow = fbuf[s], ibuf[s], bbuf[s]
        if prefetch and q + 1 < rows:  # the next row's state on its way while this one is stepped
            _prefetch_row(fbuf, ibuf, bbuf, slots[order[q + 1] if ordered else q + 1])
        ready = True
        stats_finite = True
        filled_before = 0
        n_stat = float(frow[cfg[NORM_N]]) if norm else 0.0
        if is_ar:
            filled_before = irow[cfg[AR_FILLED]]
            ready = filled_before >= window
            _ar_features(frow, cfg, feats)
            last0 = aw + (window - 1) * dim
            for d in range(dim):
                target[d] = x[r, d] - frow[last0 + d] if family == AR_DELTA else x[r, d]
            if norm:  # the window by the statistics before this value; the target by those including it
                for k in range(n_in):
                    d = k % dim
                    z = (float(feats[k]) - float(frow[xm + d])) / _std(float(frow[xv + d]), tiny)
                    feats[k] = _clamp(z, FEATURE_CLIP)
                stats_finite = _updated(frow, xm, xv, n_stat, target, x_mean, x_var, cell)
                if norm_target:
                    for d in range(dim):
                        y_mean[d], y_var[d] = x_mean[d], x_var[d]
        else:
            for o in range(n_out):
                target[o] = y[r, o]
            if norm:  # the inputs by statistics including them (x is known when predicting)
                stats_finite = _updated(frow, xm, xv, n_stat, x[r], x_mean, x_var, cell)
                for j in range(n_in):
                    feats[j] = _clamp((float(x[r, j]) - x_mean[j]) / _std(x_var[j], tiny), FEATURE_CLIP)
                if norm_target:
                    stats_finite = (
                        _updated(frow, ym, yv, n_stat, target, y_mean, y_var, cell) and stats_finite
                    )
            else:
                for j in range(n_in):
                    feats[j] = x[r, j]
        _affine(frow, feats, out, n_in, n_out)
        for o in range(n_out):
            if norm_target:  # learn the z-scored target, at most CLIP from the output; serve in user units
                z = (float(target[o]) - y_mean[o]) / _std(y_var[o], tiny)
                learn[o] = out[o] + _clamp(z - out[o], CLIP)
                served[o] = float(frow[ym + o]) + _std(float(frow[yv + o]), tiny) * _clamp(out[o], BOUND)
            else:
                learn[o] = float(target[o])
                served[o] = out[o]
        if mix:  # a series: the naive forecast is no change
            _share(frow, cfg, irow[cfg[STEP]], share, tiny)
            for d in range(dim):
                naive[d] = 0.0 if family == AR_DELTA else float(frow[aw + (window - 1) * dim + d])
                model_served[d] = served[d]
                served[d] = naive[d] + share[d] * (served[d] - naive[d])
        delta = float(frow[cfg[HUBER]])
        cell[0] = _loss_and_dout(loss_kind, out, learn, delta, dout, n_out)
        if norm or mix:  # the loss is the served prediction's, in the user's units
            cell[0] = _loss_and_dout(loss_kind, served, target, delta, scratch, n_out)
        loss = float(cell[0])
        finite = math.isfinite(loss) and stats_finite
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
                v = served[o] + float(frow[aw + (window - 1) * dim + o]) if family == AR_DELTA else served[o]
                results[r, o] = v if ready else math.nan
            elif loss_kind == BCE:
                results[r, o] = 1.0 / (1.0 + math.exp(-served[o]))
            else:
                results[r, o] = served[o]
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
        # ----- the statistics (ar: warming values count too, once they make a change) -----
        value_finite = True
        if is_ar:
            for d in range(dim):
                if not math.isfinite(x[r, d]):
                    value_finite = False
        keep = ok
        if is_ar and not ready:
            has_target = filled_before >= 1 if family == AR_DELTA else True
            keep = value_finite and has_target and stats_finite
        if norm and keep:
            for j in range(n_x):
                frow[xm + j], frow[xv + j] = x_mean[j], x_var[j]
            if not is_ar and norm_target:
                for o in range(n_out):
                    frow[ym + o], frow[yv + o] = y_mean[o], y_var[o]
            frow[cfg[NORM_N]] = min(n_stat + 1.0, 1.0 / ALPHA)
        if mix and ok:  # the mix's discounted errors and the skill figures
            mm0, mn0, sk = cfg[MIX_MODEL], cfg[MIX_NAIVE], cfg[SKILL]
            for d in range(dim):
                t = float(target[d])
                frow[mm0 + d] = MIX_RHO * float(frow[mm0 + d]) + abs(t - model_served[d]) ** MIX_POWER
                frow[mn0 + d] = MIX_RHO * float(frow[mn0 + d]) + abs(t - naive[d]) ** MIX_POWER
            frow[cfg[MIX_N]] = MIX_RHO * float(frow[cfg[MIX_N]]) + 1.0
            for k in range(2):
                cell[0] = _loss_and_dout(
                    loss_kind, model_served if k == 0 else naive, target, delta, scratch, n_out
                )
                value, prev = float(cell[0]), float(frow[sk + k])
                frow[sk + k] = value if prev != prev else prev + _EWMA * (value - prev)
            total = 0.0
            for d in range(dim):
                total += share[d]
            frow[sk + 2] = total / dim
        # ----- the ar window (also while warming), its forecast -----
        if is_ar:
            if not ready and not value_finite:
                nonfinite = True
            if (not ready and value_finite) or ok:
                for k in range((window - 1) * dim):
                    frow[aw + k] = frow[aw + dim + k]
                for d in range(dim):
                    frow[aw + (window - 1) * dim + d] = x[r, d]
                irow[cfg[AR_FILLED]] = min(irow[cfg[AR_FILLED]] + 1, window)
            if irow[cfg[AR_FILLED]] >= window:
                _forecast(frow, irow, cfg, feats, out, share, results[r, n_out + 1 :], tiny)
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


@njit(cache=True)
def predict_rows(
    fbuf: np.ndarray,
    ibuf: np.ndarray,
    cfg: np.ndarray,
    slots: np.ndarray,
    x: np.ndarray,
    results: np.ndarray,
    tiny: float,
) -> None:
    """Predictions without learning into ``results`` ``[n, out]``, as :func:`observe_rows` makes them
    (``Round.predict``): ``linear``: from ``x`` ``[n, in]`` (standardised by statistics including it, served
    in the target's units); ``ar``: the current forecast (``x`` unused), NaN while warming."""
    n_in, n_out, dim = cfg[N_IN], cfg[N_OUT], cfg[DIM]
    is_ar = cfg[FAMILY] != LINEAR
    xm, xv, ym, yv = cfg[NORM_X_MEAN], cfg[NORM_X_VAR], cfg[NORM_Y_MEAN], cfg[NORM_Y_VAR]
    feats = np.empty(n_in, fbuf.dtype)
    out = np.empty(n_out, np.float64)
    share = np.zeros(n_out, np.float64)
    x_mean, x_var = np.empty(n_in, np.float64), np.empty(n_in, np.float64)
    cell = np.empty(1, fbuf.dtype)
    for r in range(slots.shape[0]):
        frow, irow = fbuf[slots[r]], ibuf[slots[r]]
        if is_ar:
            if irow[cfg[AR_FILLED]] >= cfg[WINDOW]:
                _forecast(frow, irow, cfg, feats, out, share, results[r], tiny)
            else:
                for d in range(dim):
                    results[r, d] = math.nan
            continue
        if xm >= 0:
            _updated(frow, xm, xv, float(frow[cfg[NORM_N]]), x[r], x_mean, x_var, cell)
            for j in range(n_in):
                feats[j] = _clamp((float(x[r, j]) - x_mean[j]) / _std(x_var[j], tiny), FEATURE_CLIP)
        else:
            for j in range(n_in):
                feats[j] = x[r, j]
        _affine(frow, feats, out, n_in, n_out)
        for o in range(n_out):
            v = out[o]
            if ym >= 0:
                v = float(frow[ym + o]) + _std(float(frow[yv + o]), tiny) * _clamp(v, BOUND)
            results[r, o] = 1.0 / (1.0 + math.exp(-v)) if cfg[LOSS] == BCE else v
