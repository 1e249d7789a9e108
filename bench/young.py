"""What a new stream's first observations cost against a later one's, side by side in one process.

Run: ``.venv/bin/python -m bench.young [--streams 1000 10000] [--rounds 6]``.

A default stream (``linear 16``, the tracking kernel, one thread) measures its inputs' scales over its
first ``tracking.SCALE_WARMUP`` observations and re-expresses every head in them at each (the fold:
docs/engine.md, "Fifteenth session"). A fleet just created, or a camera's short object tracks, runs in that
phase. Each round builds a fresh pool of ``--streams`` streams and steps each of them ``SCALE_WARMUP`` times
in batches of 1,024 ("young"), then steps the same pool, now past its warm-up, for as many batches again
("steady"); the rates are process CPU time, and "young / steady" is the median of the per-round ratios of
the cost per observation, with their range. The pool's creation is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.engine import DEFAULT, Workload, build_engine
from trackin.models.tracking import SCALE_WARMUP

BATCH = 1_024


def cpu_rate(step: Callable[[int], None], batches: int, start: int) -> float:
    """Observations per CPU second of ``batches`` batches from the workload's ``start``-th."""
    began = time.process_time()
    for k in range(start, start + batches):
        step(k)
    return batches * BATCH / (time.process_time() - began)


def one_round(streams: int, work: Workload) -> tuple[float, float]:
    """A fresh pool's rate over its streams' first ``SCALE_WARMUP`` observations, then past them."""
    engine, ids = build_engine(DEFAULT, streams)
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)

    def step(k: int) -> None:
        who, rows = work.window(k, BATCH)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))

    batches = streams * SCALE_WARMUP // BATCH  # every stream about SCALE_WARMUP times (arrivals are shuffled)
    young = cpu_rate(step, batches, 0)
    steady = cpu_rate(step, batches, batches)
    return young, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"bench.young: linear 16 (the default), batches of {BATCH:,}, one thread, process CPU time;"
        f" scale warm-up {SCALE_WARMUP} observations; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'streams':>8} {'young obs/s':>11} {'steady obs/s':>12} {'young us':>8} {'steady us':>9}"
        f" {'young / steady':>14}"
    )
    one_round(1_000, Workload(1_000))  # kernels loaded, allocator warm
    for streams in args.streams:
        work = Workload(streams)
        young, steady = zip(*(one_round(streams, work) for _ in range(args.rounds)), strict=True)
        ratios = np.array(steady) / np.array(young)  # cost per observation, young over steady
        mid_young, mid_steady = statistics.median(young), statistics.median(steady)
        print(
            f"{streams:>8,} {mid_young / 1e3:>10.0f}k {mid_steady / 1e3:>11.0f}k"
            f" {1e6 / mid_young:>8.2f} {1e6 / mid_steady:>9.2f}"
            f" {statistics.median(ratios):>6.2f}x {ratios.min():.2f}-{ratios.max():.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
