"""Both fused kernels with and without each next row's state prefetched, side by side in one process.

Run: ``.venv/bin/python -m bench.prefetch [--streams 1000 10000 100000] [--rounds 12] [--window 0.5]``.

For each kernel and stream count, one pool of ``linear 16`` streams takes batches of 1,024 in
``StreamPool.observe`` (the tensor API of ``bench.engine``), one thread: the default (the tracking kernel,
its streams past their scale warm-up) and ``precondition: none`` (the first-order kernel). Windows with the
prefetch as the service runs it alternate with windows with it off, in turns, so a slow phase of a shared
machine hits both; rates are process CPU time, and "on / off" is the median of the per-round ratios, with
their range. The tracking kernel prefetches only where the pool holds at least
``fused_tracking.PREFETCH_SPREAD`` slots per row of the batch ("slots/row": its capacity over the batch)
and its state is past ``SORT_MIN_STATE_BYTES``; the first-order kernel always does
(``fused_round.PREFETCH_NEXT_ROW``).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import torch

from bench.engine import DEFAULT, FAMILIES, Workload, bench_tensor, build_engine
from bench.engine_fused import warm_past_scales
from trackin.models import fused_round, fused_tracking
from trackin.models.specs import StreamSpec

BATCH = 1_024


@contextmanager
def tracking_prefetch(on: bool) -> Iterator[None]:
    """The tracking kernel's prefetch as the service runs it, or off (no pool holds 2**62 slots a row)."""
    default = fused_tracking.PREFETCH_SPREAD
    fused_tracking.PREFETCH_SPREAD = default if on else 2**62
    try:
        yield
    finally:
        fused_tracking.PREFETCH_SPREAD = default


@contextmanager
def first_order_prefetch(on: bool) -> Iterator[None]:
    """The first-order kernel's prefetch, on (the service's) or off."""
    default = fused_round.PREFETCH_NEXT_ROW
    fused_round.PREFETCH_NEXT_ROW = on
    try:
        yield
    finally:
        fused_round.PREFETCH_NEXT_ROW = default


Setting = Callable[[bool], AbstractContextManager[None]]
KERNELS: dict[str, tuple[StreamSpec, Setting]] = {
    "tracking (default)": (DEFAULT, tracking_prefetch),
    "first-order": (FAMILIES["linear 16, first order"], first_order_prefetch),
}


def compare(
    spec: StreamSpec,
    setting: Setting,
    streams: int,
    rounds: int,
    window: float,
) -> tuple[int, list[float], list[float]]:
    """The pool's capacity, and the CPU-time rates (observations per second) of the windows with the
    prefetch as the service runs it and with it off."""
    work = Workload(streams)
    engine, ids = build_engine(spec, streams)
    if spec is DEFAULT:
        warm_past_scales(engine, ids, work)
    (pool,) = engine.pools
    rates: dict[bool, list[float]] = {True: [], False: []}
    for k in range(rounds):
        for on in (True, False) if k % 2 == 0 else (False, True):
            with setting(on):
                bench_tensor(engine, ids, work, BATCH, 0.05)  # the setting's first batches, untimed
                rates[on].append(bench_tensor(engine, ids, work, BATCH, window).per_cpu_second)
    return pool.capacity, rates[True], rates[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=12, help="windows of each setting")
    parser.add_argument("--window", type=float, default=0.5, help="seconds per window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench.prefetch: linear 16, batches of {BATCH:,}, one thread, process CPU time")
    print(
        f"{args.rounds} alternated windows of {args.window:g} s per setting; the tracking kernel prefetches"
        f" from {fused_tracking.PREFETCH_SPREAD} slots per row; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'kernel':<18} {'streams':>8} {'slots/row':>9} {'on obs/s':>9} {'off obs/s':>9} {'on / off':>8}"
        f" {'range':>11}"
    )
    for kernel, (spec, setting) in KERNELS.items():
        for streams in args.streams:
            capacity, with_it, without = compare(spec, setting, streams, args.rounds, args.window)
            ratios = np.array(with_it) / np.array(without)
            print(
                f"{kernel:<18} {streams:>8,} {capacity / BATCH:>9.1f}"
                f" {statistics.median(with_it) / 1e3:>8.0f}k {statistics.median(without) / 1e3:>8.0f}k"
                f" {statistics.median(ratios):>7.2f}x"
                f" {ratios.min():>5.2f}-{ratios.max():.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
