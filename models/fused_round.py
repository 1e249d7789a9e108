"""The fused round of a first-order closed-form pool: one compiled kernel call per batch, on the CPU.

It covers the default first-order configurations: standardised streams (:mod:`models.standardize`) and
series served with the naive mix (:mod:`models.naive_mix`), as well as raw units.

:class:`FusedRound` stands where :class:`models.round.Round` stands for ``linear`` and ``ar`` (without
hidden layers) pools off the tracking path, and computes the same math (:mod:`models.fused_kernel`, in
place on the pool's packed buffers). It tells the kernel where each column lives once, at construction
(``cfg``), and per call hands it numpy views of the buffers and of the batch, and preallocated outputs.
The rows are stepped in arrival order, so a stream seen twice in a batch needs no split into rounds; with
more than one intra-op thread a big batch is stepped as runs of distinct streams at once
(:mod:`models.kernel_threads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from trackin.models import fused_kernel as K
from trackin.models import kernel_threads, keys
from trackin.models.families import FlatModel
from trackin.models.hyper import Hyperparameters
from trackin.models.layout import FLOAT, PackedState
from trackin.models.specs import ARModel

__all__ = ["FLOAT_HYPERS", "FusedResult", "FusedRound"]

FLOAT_HYPERS: dict[str, tuple[str | None, ...]] = {
    "trackin": ("lr", "gamma", "beta", "eta", "eps_decay", "weight_decay", "max_grad_norm"),
    "sgd": ("lr", "momentum", "dampening", None, None, "weight_decay", "max_grad_norm"),
    "adam": ("lr", "beta1", "beta2", "eps", None, "weight_decay", "max_grad_norm"),
}
"""Each optimizer's float hyperparameters in the kernel's order (weight decay and clipping last)."""

_OPTIMIZERS = {"trackin": K.TRACKIN, "sgd": K.SGD, "adam": K.ADAM}
_EVERY_ROW = np.empty(0, dtype=np.int64)
"""No order: the kernel steps every row as it arrived."""
ROWS_PER_THREAD = 256
"""Rows per intra-op thread (`kernel_threads.threads_for`): this kernel takes about 0.45 us a row, so a
split needs more rows to pay for the hand-off than the tracking kernel's (two threads, in-process, 1,000
first-order linear-16 streams: 0.67-0.93x at 256 rows, 1.09-1.19x at 512, 1.22-1.31x at 1,024, 1.56-1.66x
at 4,096)."""
_LOSSES = {"mse": K.MSE, "huber": K.HUBER_LOSS, "bce": K.BCE}
PREFETCH_NEXT_ROW = True
"""The kernel prefetches each next row's state while it steps a row (`fused_kernel.PREFETCH`). Rows are
stepped in arrival order, so in a big pool each lies far from the last, where the hardware's own
prefetchers do not reach. In-process, batches of 1,024 of first-order `linear 16` streams: 100,000 streams
1.84x, 10,000 1.09x, 1,000 1.00-1.04x (docs/engine.md, "Fifteenth session")."""


class FusedResult(NamedTuple):
    """Per-row outcomes of one call, numpy arrays on the host (see ``ObserveResult``)."""

    pred: np.ndarray  # [n, out] (views of one block of results)
    loss: np.ndarray  # [n]
    forecast: np.ndarray | None  # [n, dim] (ar), else None
    step: np.ndarray  # [n] int64
    flags: np.ndarray  # [4, n] bool: applied, warming, nonfinite, drift


def _config(
    packed: PackedState, net: FlatModel, loss: str, hyper: Hyperparameters, buffers: Sequence[str]
) -> np.ndarray:
    """Where the kernel finds each column of the pool's rows, and the pool's structure (``K.CFG_SIZE``)."""
    cfg = np.full(K.CFG_SIZE, -1, dtype=np.int64)
    col = {key: c.start for key, c in packed.columns.items()}
    model, first = net.model, next(iter(net.shapes))
    assert col[keys.param(first)] == 0, "the kernel expects the parameters first"
    n_out = net.out_dim
    cfg[K.N_OUT], cfg[K.N_PARAMS] = n_out, net.n_params
    cfg[K.N_IN] = (net.n_params - n_out) // n_out
    if isinstance(model, ARModel):
        cfg[K.FAMILY] = K.AR_DELTA if model.target == "delta" else K.AR_LEVEL
        cfg[K.WINDOW], cfg[K.DIM] = model.window, model.dim
        cfg[K.AR_WINDOW], cfg[K.AR_FILLED] = col[keys.AR_WINDOW], col[keys.AR_FILLED]
    else:
        cfg[K.FAMILY] = K.LINEAR
    cfg[K.LOSS], cfg[K.OPT] = _LOSSES[loss], _OPTIMIZERS[hyper.name]
    for index, (kind, _) in zip((K.BUF0, K.BUF1), hyper.buffers, strict=False):
        if kind in buffers:
            cfg[index] = col[keys.buffer(kind, first)]
    if hyper.buffers and hyper.buffers[0][0] in buffers:
        cfg[K.RESET_BUF] = cfg[K.BUF0]  # a drift with reset_momentum clears the first declared buffer
    for k, name in enumerate(FLOAT_HYPERS[hyper.name]):
        if name is not None:
            cfg[K.HYPER + k] = col[keys.hyper(name)]
    named = {
        K.SQ_AVG: keys.opt("sq_avg"),
        K.FIG: keys.FIGURES[0],
        K.HUBER: keys.HUBER_DELTA,
        K.DRIFT_MEAN: keys.DRIFT_MEAN,
        K.DRIFT_TOTAL: keys.DRIFT_TOTAL,
        K.DRIFT_MIN: keys.DRIFT_MIN,
        K.DRIFT_DELTA: keys.DRIFT_DELTA,
        K.DRIFT_THRESHOLD: keys.DRIFT_THRESHOLD,
        K.STEP: keys.STEP,
        K.BETA_RULE: keys.hyper("beta_rule"),
        K.NONFINITE: keys.NONFINITE,
        K.DRIFT_N: keys.DRIFT_N,
        K.DRIFT_COUNT: keys.DRIFT_COUNT,
        K.DRIFT_LAST: keys.DRIFT_LAST_STEP,
        K.DRIFT_WARMUP: keys.DRIFT_WARMUP,
        K.DEBIAS: keys.hyper("debias"),
        K.DRIFT_ENABLED: keys.DRIFT_ENABLED,
        K.DRIFT_RESET: keys.DRIFT_RESET,
        K.NORM_X_MEAN: keys.NORM_X_MEAN,
        K.NORM_X_VAR: keys.NORM_X_VAR,
        K.NORM_Y_MEAN: keys.NORM_Y_MEAN,
        K.NORM_Y_VAR: keys.NORM_Y_VAR,
        K.NORM_N: keys.NORM_N,
        K.MIX_MODEL: keys.MIX_MODEL,
        K.MIX_NAIVE: keys.MIX_NAIVE,
        K.MIX_N: keys.MIX_N,
        K.SKILL: keys.SKILL_FIGURES[0],
    }
    for index, key in named.items():
        if key in col:
            cfg[index] = col[key]
    starts = [col[k] for k in keys.FIGURES]
    assert starts == list(range(starts[0], starts[0] + len(starts))), "figures are one slice"
    if keys.MIX_MODEL in col:
        skill = [col[k] for k in keys.SKILL_FIGURES]
        assert skill == list(range(skill[0], skill[0] + len(skill))), "skill figures are one slice"
    return cfg


class FusedRound:
    """The fused step of one first-order closed-form pool on the CPU (float32 or float64)."""

    def __init__(
        self, packed: PackedState, net: FlatModel, loss: str, hyper: Hyperparameters, buffers: Sequence[str]
    ) -> None:
        assert net.closed_form
        assert packed.device.type == "cpu"
        self._packed = packed
        self._cfg = _config(packed, net, loss, hyper, buffers)
        self._dtype = packed.dtypes[FLOAT]
        self._np_dtype = torch.empty(0, dtype=self._dtype).numpy().dtype
        self._tiny = torch.finfo(self._dtype).tiny
        self._out = net.out_dim
        self._ar = isinstance(net.model, ARModel)
        self._no_target = np.empty((0, 0), dtype=self._np_dtype)
        self._arrays: tuple[list[Tensor], tuple[np.ndarray, ...]] | None = None  # the buffers, their views

    def _buffers(self) -> tuple[np.ndarray, ...]:
        """Numpy views of the packed buffers (new ones after the pool grows: ``grow`` replaces the list)."""
        buffers = self._packed.buffers
        if self._arrays is None or self._arrays[0] is not buffers:
            self._arrays = (buffers, tuple(b.numpy() for b in buffers))
        return self._arrays[1]

    def rows(self, x: np.ndarray | Tensor) -> np.ndarray:
        """A batch as the kernel takes it: a writable C-contiguous ``[n, width]`` array of the pool's dtype
        (a read-only array would be another signature for numba to compile)."""
        if isinstance(x, Tensor):  # torch casts without numpy's overflow warning (1e300 -> inf, refused)
            if x.dtype is not self._dtype or x.requires_grad or x.device.type != "cpu":
                x = x.detach().to("cpu", self._dtype)
            x = x.numpy()
        elif x.dtype != self._np_dtype:
            with np.errstate(over="ignore"):
                x = x.astype(self._np_dtype)
        if not x.flags.c_contiguous or not x.flags.writeable:
            x = np.array(x, order="C")
        return x

    def predict(self, s: Tensor, x: Tensor | None) -> Tensor:
        """Predictions without learning ``[n, out]`` in the pool's dtype (``Round.predict``: for ``ar``, the
        current forecast, NaN while warming), from the kernel's state."""
        slots = np.array(s.cpu().numpy(), dtype=np.int64, order="C")
        assert self._ar or (x is not None and x.shape[0] == slots.shape[0]), "linear predictions need inputs"
        xs = self.rows(x) if x is not None and not self._ar else self._no_target
        results = np.empty((slots.shape[0], self._out), self._np_dtype)
        f, i, _ = self._buffers()
        K.predict_rows(f, i, self._cfg, slots, xs, results, self._tiny)
        return torch.from_numpy(results)

    def run(self, slots: np.ndarray, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None) -> FusedResult:
        """Predict, score and step once per row, in order; ``slots`` must be resident (not checked here)."""
        n = slots.shape[0]
        xs = self.rows(x)
        ys = self.rows(y) if y is not None and not self._ar else self._no_target
        out = self._out
        results = np.empty((n, 2 * out + 1 if self._ar else out + 1), self._np_dtype)
        step = np.empty(n, np.int64)
        flags = np.empty((4, n), np.bool_)
        f, i, b = self._buffers()
        if slots.dtype != np.int64 or not slots.flags.c_contiguous or not slots.flags.writeable:
            slots = np.array(slots, dtype=np.int64, order="C")
        self._cfg[K.PREFETCH] = PREFETCH_NEXT_ROW
        args = (f, i, b, self._cfg, slots, xs, ys, results, step, flags, self._tiny)
        parts = kernel_threads.threads_for(n, ROWS_PER_THREAD)
        runs = kernel_threads.split_batch(slots, None, parts) if parts > 1 else []
        if len(runs) > 1:  # runs of distinct streams on the engine's intra-op threads
            kernel_threads.run_split(K.observe_rows, args, runs)
        else:
            K.observe_rows(*args, _EVERY_ROW)
        forecast = results[:, out + 1 :] if self._ar else None
        return FusedResult(results[:, :out], results[:, out], forecast, step, flags)
