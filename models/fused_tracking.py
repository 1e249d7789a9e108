"""The fused tracking round: :class:`TrackingRound`'s math in one compiled call per batch on the CPU.

:class:`FusedTrackingRound` hands the pool's packed buffers (as NumPy views: no copy), the batch and the
column offsets to :func:`models.fused_tracking_kernel.tracking_round`, which steps the rows in place in
arrival order, so the pool passes a whole batch at once (:meth:`FusedTrackingRound.observe`), repeats
included. Prediction without learning (``/predict``) is the kernel's too
(:func:`models.fused_tracking_kernel.tracking_predict`): the torch round took milliseconds per call.
:func:`warm_up` compiles both for float32 and float64 (or loads them from numba's on-disk cache) on zero rows,
so the first request does not pay for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from trackin.models import fused_tracking_kernel as K
from trackin.models import kernel_threads, keys, tracking
from trackin.models.drift import MEAN_WINDOW
from trackin.models.figures import LOSS_EWMA_ALPHA
from trackin.models.hyper import Hyperparameters
from trackin.models.layout import PackedState
from trackin.models.losses import Loss
from trackin.models.rows import Settings
from trackin.models.specs import StreamSpec
from trackin.models.tracking_round import TrackingNet, TrackingRound

__all__ = ["FusedTrackingRound", "warm_up"]

_KINDS = {"linear": 0, "delta": 1, "level": 2, "track": 3}
_COLUMNS = {
    K.O_W: keys.TRACK_WEIGHT,
    K.O_MOM: keys.buffer("momentum", "weight"),
    K.O_EPS: keys.buffer("eps", "weight"),
    K.O_SQ: keys.opt("sq_avg"),
    K.O_FIG: keys.FIGURES[0],
    K.O_LR: keys.hyper("lr"),
    K.O_GAMMA: keys.hyper("gamma"),
    K.O_BETA: keys.hyper("beta"),
    K.O_ETA: keys.hyper("eta"),
    K.O_EPS_DECAY: keys.hyper("eps_decay"),
    K.O_WD: keys.hyper("weight_decay"),
    K.O_MGN: keys.hyper("max_grad_norm"),
    K.O_RULE: keys.hyper("beta_rule"),
    K.O_DEBIAS: keys.hyper("debias"),
    K.O_HD: keys.HUBER_DELTA,
    K.O_COV: keys.TRACK_COV,
    K.O_SM2: keys.TRACK_SCALE_M2,
    K.O_SN: keys.TRACK_SCALE_N,
    K.O_RESID2: keys.TRACK_RESID2,
    K.O_NAIVE2: keys.TRACK_NAIVE2,
    K.O_STATW: keys.TRACK_STAT_W,
    K.O_MIXM: keys.MIX_MODEL,
    K.O_MIXN: keys.MIX_NAIVE,
    K.O_MIXCOUNT: keys.MIX_N,
    K.O_LEARNED: keys.TRACK_LEARNED,
    K.O_SKILL: keys.SKILL_FIGURES[0],
    K.O_HLOSS: keys.HEAD_LOSS,
    K.O_HS2: keys.HEAD_S2,
    K.O_MEAN: keys.TRACK_MEAN,
    K.O_MEANW: keys.TRACK_MEAN_W,
    K.O_LAST: keys.SERIES_LAST,
    K.O_TS: keys.SERIES_TS,
    K.O_SEEN: keys.SERIES_SEEN,
    K.O_RATE: keys.SERIES_RATE,
    K.O_RATES: keys.SERIES_RATES,
    K.O_NONFIN: keys.NONFINITE,
    K.O_DMEAN: keys.DRIFT_MEAN,
    K.O_DTOT: keys.DRIFT_TOTAL,
    K.O_DMIN: keys.DRIFT_MIN,
    K.O_DDELTA: keys.DRIFT_DELTA,
    K.O_DTHR: keys.DRIFT_THRESHOLD,
    K.O_DN: keys.DRIFT_N,
    K.O_DCOUNT: keys.DRIFT_COUNT,
    K.O_DLAST: keys.DRIFT_LAST_STEP,
    K.O_DWARM: keys.DRIFT_WARMUP,
    K.O_DEN: keys.DRIFT_ENABLED,
    K.O_DRESET: keys.DRIFT_RESET,
    K.O_STEP: keys.STEP,
}
assert sorted(_COLUMNS) == list(range(K.N_COL))


Outcomes = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]
"""predictions, losses, steps, applied, warming, nonfinite, drift, forecasts (``ObserveResult``'s order)."""
Host = Tensor | np.ndarray
"""Rows as a host tensor or a NumPy array (`StreamPool.observe_host` passes arrays: no torch wrapping)."""
SORT_MIN_ROWS = 256
"""The smallest batch the kernel steps in slot order (`slot_order`)."""
SORT_MIN_STATE_BYTES = 4 * 2**20
"""The smallest pool (its float buffer) whose batches are stepped in slot order: below, the state stays in
a core's cache (1-2 MiB of L2 on these machines) and the order gains nothing. 1,000 linear-16 streams (6.5
MB), in-process: batches of 1,000 1.01x, of 2,000-8,000 (merged WebSocket frames) 1.06-1.07x; 100 and 300
streams: 0.99x and 1.00x (docs/engine.md, "Ninth session")."""


PREFETCH_SPREAD = 4
"""The kernel prefetches each next row's state (`fused_tracking_kernel.K_PREFETCH`) when the pool's state
is past ``SORT_MIN_STATE_BYTES`` and it holds at least this many slots per row of the batch: rows stepped
in slot order then lie slots apart, where the hardware's own prefetchers, which follow addresses that
advance steadily within a page, do not reach. In-process, batches of 1,024 of default `linear 16` streams
(about 7 kB of state each): 10,000 streams 1.16x, 100,000 1.14-1.21x; 1,000 streams, which a batch covers
almost slot by slot, lost 5-9 % (docs/engine.md, "Fifteenth session")."""


def slot_order(slots: np.ndarray, nslots: int | None = None) -> np.ndarray | None:
    """The order the kernel steps a batch's rows in: by slot, each slot's rows in their order (a stable
    sort), or None for the arrival order (a small batch, or one already in slot order).

    Streams are independent, so only each stream's own order matters, and the outcomes (written by row)
    and the state are the arrival order's to the bit. Where the fleet's state outgrows the caches,
    stepping in slot order walks the buffers forwards, with a stream's repeats back to back (in-process,
    3,000 linear-16 streams in batches of 4,000: 1.5x; docs/engine.md, "Eighth session"); where it fits,
    it costs a sort. ``nslots``: the pool's slots (every slot is below it); the sort is a counting sort
    (`fused_tracking_kernel.slot_order_into`), linear in the rows and the slots."""
    if slots.shape[0] < SORT_MIN_ROWS or bool((slots[1:] >= slots[:-1]).all()):
        return None
    order = np.empty(slots.shape[0], dtype=np.int64)
    K.slot_order_into(slots, int(slots.max()) + 1 if nslots is None else nslots, order)
    return order


_ARRIVAL = np.empty(0, dtype=np.int64)
"""No order: the kernel steps the rows as they arrived."""

_KERNEL: Any = K.tracking_round  # numba's Dispatcher (typed loosely: its stubs know no entry points)
_PREDICT: Any = K.tracking_predict
_TYPEOF: Any = numba.typeof


def _columns(packed: PackedState) -> np.ndarray:
    """Each offset the kernel reads, from the pool's layout (-1: the pool has no such key)."""
    col = np.full(K.N_COL, -1, dtype=np.int64)
    for index, key in _COLUMNS.items():
        column = packed.columns.get(key)
        if column is not None:
            col[index] = column.start
    return col


class FusedTrackingRound(TrackingRound):
    """A tracking pool's round as one numba call; ``__call__`` takes a whole batch (repeats too)."""

    def __init__(
        self,
        packed: PackedState,
        net: TrackingNet,
        loss: Loss,
        hyper: Hyperparameters,
        buffers: Sequence[str],
        settings: Settings,
        spec: StreamSpec,
    ) -> None:
        super().__init__(packed, net, loss, hyper, buffers, settings, spec)
        assert hyper.name == "trackin", "the tracking path steps with TrackIn"
        lay = self.layout
        self._np_dtype = np.dtype(str(packed.dtypes[0]).removeprefix("torch."))
        finfo = torch.finfo(packed.dtypes[0])
        cfg = np.zeros(K.N_CFG, dtype=np.int64)
        cfg[K.K_KIND] = _KINDS[lay.kind]
        cfg[K.K_IN] = lay.features - 1 if lay.kind == "linear" else 0
        cfg[K.K_OUT], cfg[K.K_P], cfg[K.K_LAGS], cfg[K.K_DIM] = lay.outputs, lay.features, lay.lags, lay.dim
        cfg[K.K_NSCALE] = lay.scales
        cfg[K.K_STANDARDIZE], cfg[K.K_MIX] = spec.standardize, spec.mix_naive
        cfg[K.K_HUBER] = spec.loss == "huber"
        cfg[K.K_HEADS] = lay.heads
        self._cfg = cfg
        fc = np.zeros(K.N_FC + lay.heads, dtype=np.float64)
        fc[K.N_FC :] = self._forgets
        fc[K.C_HEAD_RHO], fc[K.C_TINY], fc[K.C_FMAX] = tracking.HEAD_RHO, finfo.tiny, finfo.max
        fc[K.C_CLIP], fc[K.C_FEATURE_CLIP], fc[K.C_BOUND] = (
            tracking.CLIP,
            tracking.FEATURE_CLIP,
            tracking.BOUND,
        )
        fc[K.C_COV_CAP], fc[K.C_STAT_ALPHA] = tracking.COV_CAP, tracking.STAT_ALPHA
        fc[K.C_STAT_CLIP] = tracking.STAT_CLIP
        fc[K.C_SCALE_WARMUP], fc[K.C_MIX_RHO] = tracking.SCALE_WARMUP, tracking.MIX_RHO
        fc[K.C_MIX_ETA], fc[K.C_MIX_POWER] = tracking.MIX_ETA, tracking.MIX_POWER
        fc[K.C_MIX_BIAS], fc[K.C_MIX_WARMUP] = tracking.mix_prior(lay.kind)
        fc[K.C_EWMA], fc[K.C_PH_WINDOW] = LOSS_EWMA_ALPHA, MEAN_WINDOW
        fc[K.C_PRIOR], fc[K.C_SCALE_POOL] = tracking.prior(lay.kind), tracking.SCALE_POOL
        self._fc = fc
        self._kcol = _columns(packed)
        self._arrays: tuple[Tensor, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._no_ts = np.empty(0, dtype=self._np_dtype)
        self._entry: Callable[..., None] | None = None  # the compiled overload for this pool's types

    def _numpy_buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The packed buffers as NumPy views (rebuilt when the pool has grown)."""
        bufs = self._packed.buffers
        cached = self._arrays
        if cached is None or cached[0] is not bufs[0]:
            cached = self._arrays = (bufs[0], bufs[0].numpy(), bufs[1].numpy(), bufs[2].numpy())
        return cached[1], cached[2], cached[3]

    def _arrays_in(
        self, n: int, x: Host, y: Host | None, ts: Host | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inputs, targets (series: ``[n, 0]``) and times (NaN: one unit on) as writable C arrays of the
        pool's dtype (the kernel's types)."""
        dt = self._np_dtype
        xs = _writable(np.ascontiguousarray(_host(x), dtype=dt))
        ys = _writable(np.ascontiguousarray(_host(y), dtype=dt)) if y is not None else np.empty((n, 0), dt)
        if self.layout.kind == "linear":
            return xs, ys, self._no_ts
        if ts is None:
            return xs, ys, np.full(n, math.nan, dtype=dt)
        return xs, ys, _writable(np.ascontiguousarray(_host(ts), dtype=dt))

    def run(
        self, slots: np.ndarray, x: Host, y: Host | None, ts: Host | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Step rows ``slots`` in order (repeats too); returns served predictions, losses, forecasts (series),
        steps and the flags ``[N_FLAGS, n]``."""
        dt, lay = self._np_dtype, self.layout
        n = slots.shape[0]
        s = _writable(np.ascontiguousarray(slots, dtype=np.int64))
        xs, ys, times = self._arrays_in(n, x, y, ts)
        pred, loss = np.empty((n, lay.outputs), dtype=dt), np.empty(n, dtype=dt)
        forecast = np.empty((n, lay.dim), dtype=dt)
        step = np.empty(n, dtype=np.int64)
        flags = np.empty((K.N_FLAGS, n), dtype=np.bool_)
        fbuf, ibuf, bbuf = self._numpy_buffers()
        args: tuple[np.ndarray, ...] = (fbuf, ibuf, bbuf, s, xs, ys, times, self._cfg, self._fc, self._kcol)
        big = fbuf.nbytes >= SORT_MIN_STATE_BYTES
        order = slot_order(s, fbuf.shape[0]) if big else None  # None: arrival order
        self._cfg[K.K_PREFETCH] = big and fbuf.shape[0] >= PREFETCH_SPREAD * n
        args += (pred, loss, forecast, step, flags)
        entry = self._entry
        parts = kernel_threads.threads_for(n)
        if entry is None:  # the dispatcher picks (compiles or loads) the overload for these types, once
            every = _ARRIVAL if order is None else order
            _KERNEL(*args, every)
            self._entry = _KERNEL.overloads[tuple(_TYPEOF(a) for a in (*args, every))].entry_point
        elif parts > 1:
            runs = kernel_threads.split_batch(s, order, parts)
            if len(runs) > 1:
                kernel_threads.run_split(entry, args, runs)
            else:
                entry(*args, runs[0])
        else:  # the same types every call: skip the dispatcher's type resolution (about 4 us)
            entry(*args, _ARRIVAL if order is None else order)
        return pred, loss, forecast if lay.kind != "linear" else None, step, flags

    def predict(self, s: Tensor, x: Tensor | None) -> Tensor:
        """Served predictions without learning (:meth:`TrackingRound.predict`), one kernel call."""
        return torch.from_numpy(self.predict_rows(s.numpy(), None if x is None else x.numpy()))

    def predict_rows(self, slots: np.ndarray, x: np.ndarray | None) -> np.ndarray:
        """:meth:`predict` on NumPy arrays: ``[n, outputs]`` in the pool's dtype."""
        dt, n = self._np_dtype, slots.shape[0]
        s = _writable(np.ascontiguousarray(slots, dtype=np.int64))
        xs = np.empty((n, 0), dt) if x is None else _writable(np.ascontiguousarray(x, dtype=dt))
        out = np.empty((n, self.layout.outputs), dtype=dt)
        _PREDICT(self._numpy_buffers()[0], s, xs, self._cfg, self._fc, self._kcol, out)
        return out

    def observe(self, slots: np.ndarray, x: Tensor, y: Tensor | None, ts: Tensor | None) -> Outcomes:
        """:meth:`StreamPool.observe` for the whole batch (one kernel call): the fields of
        :class:`models.pool.ObserveResult`, in order."""
        pred, loss, forecast, step, flags = self.run(slots, x, y, ts)
        tensor = torch.from_numpy  # each flag: a NumPy row view wrapped (cheaper than a torch select)
        return (
            tensor(pred),
            tensor(loss),
            tensor(step),
            tensor(flags[K.FL_APPLIED]),
            tensor(flags[K.FL_WARMING]),
            tensor(flags[K.FL_NONFINITE]),
            tensor(flags[K.FL_DRIFT]),
            None if forecast is None else tensor(forecast),
        )

    def host(
        self, slots: np.ndarray, x: Host, y: Host | None, ts: Host | None
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None
    ]:
        """:meth:`observe`'s fields as the kernel's NumPy outputs, without wrapping each in a tensor."""
        pred, loss, forecast, step, flags = self.run(slots, x, y, ts)
        applied, warming = flags[K.FL_APPLIED], flags[K.FL_WARMING]
        return pred, loss, step, applied, warming, flags[K.FL_NONFINITE], flags[K.FL_DRIFT], forecast

    def __call__(
        self, s: Tensor, x: Tensor, y: Tensor | None, *, sync_free: bool, ts: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The round protocol of :class:`Round` (distinct slots ``s``), on the kernel."""
        pred, loss, forecast, step, flags = self.run(s.numpy(), x, y, ts)
        t = torch.from_numpy(flags)
        result = {
            "pred": torch.from_numpy(pred),
            "loss": torch.from_numpy(loss),
            "warming": t[K.FL_WARMING],
            "drift": t[K.FL_DRIFT],
            "step": torch.from_numpy(step),
            "applied": t[K.FL_APPLIED],
            "nonfinite": t[K.FL_NONFINITE],
        }
        if forecast is not None:
            result["forecast"] = torch.from_numpy(forecast)
        return result


def _host(a: Host) -> np.ndarray:
    """A host tensor's NumPy view (no copy), or the array itself."""
    return a.numpy() if isinstance(a, Tensor) else a


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy where it is read-only (a read-only array is another numba type)."""
    return a if a.flags.writeable else a.copy()


def warm_up() -> float:
    """Compile both kernels for float32 and float64 pools and the slot-order sort (or load them from numba's
    on-disk cache); returns the seconds it took. A call on zero rows: the argument types of a pool's calls,
    no state touched. Call it at start-up, before the first observation."""
    start = time.perf_counter()
    for name in ("float32", "float64"):
        dt = np.dtype(name)
        cfg = np.zeros(K.N_CFG, dtype=np.int64)
        cfg[K.K_OUT] = cfg[K.K_P] = cfg[K.K_NSCALE] = cfg[K.K_HEADS] = 1
        bufs = (np.zeros((1, 2), dt), np.zeros((1, 2), np.int64), np.zeros((1, 2), np.bool_))
        rows = (np.empty(0, np.int64), np.empty((0, 1), dt), np.empty((0, 1), dt), np.empty(0, dt))
        settings = (cfg, np.zeros(K.N_FC), np.full(K.N_COL, -1, dtype=np.int64))
        out = (np.empty((0, 1), dt), np.empty(0, dt), np.empty((0, 1), dt), np.empty(0, np.int64))
        _KERNEL(*bufs, *rows, *settings, *out, np.empty((K.N_FLAGS, 0), np.bool_), _ARRIVAL)
        _PREDICT(bufs[0], rows[0], rows[1], *settings, out[0])
    none = np.empty(0, np.int64)
    K.slot_order_into(none, 1, none)
    kernel_threads.warm_up()
    return time.perf_counter() - start
