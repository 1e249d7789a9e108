"""What the default path's covariances cost at the least, beside the whole kernel and River, in one run.

Issue 11 asks the engine at batch 1,024 for 40x River's rate (tensor API). The default ``linear`` stream
runs five recursive-least-squares heads (forgetting factors 0.8 ... 0.999), each with its own ``p x p``
covariance (``p = 17`` for 16 inputs and the bias), and every observation must read and rewrite all five:
``P phi``, then ``P <- (P - P phi phi^T P / (lambda + phi^T P phi)) / lambda``. This bench times that
recursion alone, with nothing else of the round, over the same arrival order as ``bench.engine`` (streams
in shuffled order, so each observation finds its stream's covariances wherever memory has them):

- ``touch``: read and rewrite every covariance entry once per observation (no arithmetic to speak of):
  the memory traffic alone;
- ``covariances``: the recursion alone, by the fused kernel's own covariance loops (float32, IEEE order);
- ``kernel``: the whole default round (``StreamPool.observe`` at batch 1,024, the fused tracking kernel);
- ``river``: one River ``LinearRegression`` per stream (``predict_one`` then ``learn_one``).

Rates are per second of process CPU time, one thread. ``x river`` is the ratio to River's rate in the same
run; the last column says what share of the 40x target's time budget per observation the row alone spends.

    .venv/bin/python -m bench.rls_floor [--budget 1.0] [--streams 1000 10000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from numba import njit

from bench.engine import DEFAULT, IN_DIM, Rate, Workload, bench_river, build_engine, timed
from trackin.models.fused_tracking_kernel import _cov_update, _p_phi
from trackin.models.tracking import SCALE_WARMUP

__all__ = ["main"]

HEADS = (0.8, 0.9, 0.95, 0.99, 0.999)
BATCH = 1_024
TARGET = 40.0  # issue 11: the engine at batch 1,024 against River, tensor API


@njit  # not cached: numba's cache of a function is keyed on its own file, and the loops live in another
def rls(cov: np.ndarray, phi: np.ndarray, slots: np.ndarray, rows: np.ndarray, lam: np.ndarray) -> None:
    """One RLS update per observation and head, in place, by the fused kernel's own loops (``_p_phi``,
    ``_cov_update``): ``cov [streams, heads * p * p]``, each head's covariance a flat slice, as in a row."""
    p = phi.shape[1]
    pp = np.empty(p, dtype=cov.dtype)
    for i in range(slots.shape[0]):
        x = phi[rows[i]]
        state = cov[slots[i]]
        for h in range(lam.shape[0]):
            m = state[h * p * p : (h + 1) * p * p]  # contiguous, scalars of the dtype: the kernel's compile
            quad = _p_phi(m, x, pp, p)
            inv_denom, factor = np.float32(1.0 / (lam[h] + quad)), np.float32(1.0 / lam[h])
            _cov_update(m, pp, p, inv_denom, factor)


@njit(cache=True)
def touch(cov: np.ndarray, phi: np.ndarray, slots: np.ndarray, rows: np.ndarray, lam: np.ndarray) -> None:
    """Read and rewrite each covariance entry of the observation's stream once: the memory traffic alone."""
    n = cov.shape[1] // lam.shape[0]
    for i in range(slots.shape[0]):
        for h in range(lam.shape[0]):
            m = cov[slots[i], h * n : (h + 1) * n]
            for e in range(n):
                m[e] = m[e] * lam[h]


def bench_loop(kernel: object, streams: int, work: Workload, budget: float) -> Rate:
    p = IN_DIM + 1
    identity = np.tile(np.eye(p, dtype=np.float32).ravel(), len(HEADS))
    cov = np.tile(identity, (streams, 1))
    phi = np.concatenate([work.x, np.ones((len(work.x), 1))], axis=1).astype(np.float32)
    lam = np.array(HEADS, dtype=np.float32)

    def step(k: int) -> int:
        who, rows = work.window(k, BATCH)
        kernel(cov, phi, who, rows, lam)  # type: ignore[operator]
        if k % 64 == 0:  # keep the covariances from decaying to zero or growing without bound
            cov[:] = identity
        return BATCH

    return timed(step, budget)


def bench_kernel(streams: int, work: Workload, budget: float) -> Rate:
    engine, ids = build_engine(DEFAULT, streams)
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)

    def step(k: int) -> int:
        who, rows = work.window(k, BATCH)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))
        return BATCH

    # every stream past its scale warm-up (while the input scales move, each observation also re-expresses
    # the heads in the new scales: p rank-one updates per head), as a long-running service's streams are
    for k in range(-(-(SCALE_WARMUP + 2) * streams // BATCH)):
        step(k)
    return timed(step, budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"batch {BATCH}, linear {IN_DIM} (p = {IN_DIM + 1}), {len(HEADS)} heads, one thread, process CPU time"
    )
    print(f"{'streams':>8} {'row':<14} {'us/obs':>7} {'x river':>8} {'of 40x budget':>14}")
    for streams in args.streams:
        work = Workload(streams)
        river = bench_river(work, args.budget, streams)
        assert river is not None, "River is in the bench extra"
        budget_us = 1e6 / river.per_cpu_second / TARGET
        rows = {
            "touch": bench_loop(touch, streams, work, args.budget),
            "covariances": bench_loop(rls, streams, work, args.budget),
            "kernel": bench_kernel(streams, work, args.budget),
            "river": river,
        }
        for name, rate in rows.items():
            us = 1e6 / rate.per_cpu_second
            ratio = rate.per_cpu_second / river.per_cpu_second
            print(f"{streams:>8} {name:<14} {us:>7.3f} {ratio:>7.1f}x {us / budget_us:>13.1f}x")
        print(f"{streams:>8} 40x River needs <= {budget_us:.3f} us per observation for the whole round")


if __name__ == "__main__":
    main()
