"""The tracking kernel with and without each next row's state prefetched, side by side in one process.

Run: ``.venv/bin/python -m bench.prefetch [--streams 1000 10000 100000] [--rounds 12] [--window 0.5]``.

For each stream count, one pool of default ``linear 16`` streams (past their scale warm-up) takes batches
of 1,024 in ``StreamPool.observe`` (the tensor API of ``bench.engine``), one thread. Windows with the
prefetch as the service runs it (``fused_tracking.PREFETCH_SPREAD``) alternate with windows with it off,
in turns, so a slow phase of a shared machine hits both; rates are process CPU time, and "on / off" is the
median of the per-round ratios, with their range. "slots/row" is the pool's capacity over the batch: the
kernel prefetches where it is at least ``PREFETCH_SPREAD`` (and the state past ``SORT_MIN_STATE_BYTES``).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch

from bench.engine import DEFAULT, Workload, bench_tensor, build_engine
from bench.engine_fused import warm_past_scales
from trackin.models import fused_tracking

BATCH = 1_024
OFF = 2**62  # no pool holds that many slots per row: never prefetches


def compare(streams: int, rounds: int, window: float) -> tuple[int, list[float], list[float]]:
    """The pool's capacity, and the CPU-time rates (observations per second) of the windows with the
    default spread and with the prefetch off."""
    work = Workload(streams)
    engine, ids = build_engine(DEFAULT, streams)
    warm_past_scales(engine, ids, work)
    (pool,) = engine.pools
    default = fused_tracking.PREFETCH_SPREAD
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for k in range(rounds):
            for prefetch in (True, False) if k % 2 == 0 else (False, True):
                fused_tracking.PREFETCH_SPREAD = default if prefetch else OFF
                bench_tensor(engine, ids, work, BATCH, 0.05)  # the setting's first batches, untimed
                rates[prefetch].append(bench_tensor(engine, ids, work, BATCH, window).per_cpu_second)
    finally:
        fused_tracking.PREFETCH_SPREAD = default
    return pool.capacity, rates[True], rates[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=12, help="windows of each setting")
    parser.add_argument("--window", type=float, default=0.5, help="seconds per window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench.prefetch: default linear 16, batches of {BATCH:,}, one thread, process CPU time")
    print(
        f"{args.rounds} alternated windows of {args.window:g} s per setting; prefetch from"
        f" {fused_tracking.PREFETCH_SPREAD} slots per row; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'streams':>8} {'slots/row':>9} {'on obs/s':>9} {'off obs/s':>9} {'on / off':>8} {'range':>11}")
    for streams in args.streams:
        capacity, with_it, without = compare(streams, args.rounds, args.window)
        ratios = np.array(with_it) / np.array(without)
        print(
            f"{streams:>8,} {capacity / BATCH:>9.1f} {statistics.median(with_it) / 1e3:>8.0f}k "
            f"{statistics.median(without) / 1e3:>8.0f}k {statistics.median(ratios):>7.2f}x "
            f"{ratios.min():>5.2f}-{ratios.max():.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
