"""The fused tracking kernel against the torch round on the default path (linear 16, scale-free and
RLS-preconditioned), side by side in one run with River, and what compiling the kernel costs.

Run: ``.venv/bin/python -m bench.engine --fused`` (this section only; ``--quick`` for 1,000 streams and short
cells). One thread. ``us/round`` is the wall time of one step of the batch-1 loop (``cpu``: process CPU
time, less sensitive to other load), which also gathers that step's inputs with two torch ``index_select``s;
``call`` is one ``StreamPool.observe`` call alone and ``arrays`` one ``Engine.observe_arrays`` call (the
service's: an id and float64 arrays in, arrays out), inputs prepared beforehand (microseconds, the minimum
over 3,000 calls: the cost itself, which load on the machine cannot shrink); at batch 1,024 the rates are
observations per second (``ids``: ``Engine.observe_arrays``) and their ratio to River (one
``LinearRegression`` per stream, ``predict_one`` then ``learn_one``). On a machine of more than one core, a
``fused`` row with ``threads`` > 1 runs batches of 1,024 with that many intra-op threads
(``torch.set_num_threads``: the kernel steps a batch's streams in runs on as many threads; River is pure
Python, one core, and has no such row); batch 1 is never split, so its columns are left out there. The
compile cost is measured in fresh processes: cold (an empty numba cache directory) and from numba's on-disk
cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.engine import (
    DEFAULT,
    Rate,
    Workload,
    arrays_round_us,
    bench_engine,
    bench_river,
    build_engine,
    fmt,
    round_us,
)
from trackin.models.engine import Engine
from trackin.models.kernels import Kernels
from trackin.models.tracking import SCALE_WARMUP

KERNELS: dict[str, Kernels] = {"fused": "auto", "torch": "torch"}
_CHILD = """
import json, time
start = time.perf_counter()
from trackin.models.fused_tracking import warm_up
imported = time.perf_counter() - start
print(json.dumps({"import": imported, "warm_up": warm_up()}))
"""


def compile_cost() -> dict[str, dict[str, float]]:
    """Seconds to import the kernel's module and to run :func:`warm_up` (both dtypes) in a fresh process:
    with an empty numba cache, then with the cache that run wrote."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "cached"):
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, env=env
            )
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def warm_past_scales(engine: Engine, ids: list[str], work: Workload) -> float:
    """Step every stream ``SCALE_WARMUP`` times (batches of 4,096): a stream's first observations also
    measure its input scales and fold every head into them, several times a later step's cost, so cells
    timed from a fresh fleet of 10,000+ streams timed that warm-up, not the steady state a long-running
    service is in. Returns the warm-up's rate (observations per second)."""
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)
    total, done, k = len(ids) * SCALE_WARMUP, 0, 0
    started = time.perf_counter()
    while done < total:
        who, rows = work.window(k, 4_096)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))
        done, k = done + len(who), k + 1
    return done / (time.perf_counter() - started)


def _split_row(
    engine_ids: tuple[Engine, list[str]],
    work: Workload,
    budget: float,
    threads: int,
    streams: int,
    river: Rate | None,
) -> None:
    """Batches of 1,024 on ``threads`` intra-op threads: the kernel's runs stepped at once."""
    torch.set_num_threads(threads)
    try:
        big, big_ids, _ = bench_engine(*engine_ids, work, 1_024, budget)
    finally:
        torch.set_num_threads(1)
    ratios = ["-", "-", "-"]
    if river is not None:
        ratios = [
            f"{big.per_second / river.per_second:.1f}",
            f"{big.per_cpu_second / river.per_cpu_second:.1f}",
            f"{big_ids.per_second / river.per_second:.1f}",
        ]
    print(
        f"{'fused':<7} {threads:>7} {streams:>8,} {'-':>9} {'-':>7} {'-':>5} {'-':>6} {'-':>9} "
        f"{fmt(big.per_second):>10} {fmt(big_ids.per_second):>9} "
        f"{fmt(river.per_second if river else None):>7} {ratios[0]:>8} {ratios[1]:>11} {ratios[2]:>11}",
        flush=True,
    )


def run(budget: float, stream_counts: tuple[int, ...]) -> None:
    torch.set_num_threads(1)
    print("\nfused tracking kernel vs torch round: linear 16, the default path (scale-free, RLS)")
    print(f"1 thread, {budget:g} s per cell, load average {os.getloadavg()[0]:.2f}")
    cores = os.cpu_count() or 1
    header = (
        f"{'kernels':<7} {'threads':>7} {'streams':>8} {'us/round':>9} {'cpu us':>7} "
        f"{'call':>5} {'arrays':>6} "
        f"{'obs/s b1':>9} {'obs/s 1024':>10} "
        f"{'ids 1024':>9} {'river':>7} {'x river':>8} {'cpu x river':>11} {'ids x river':>11}"
    )
    print(header)
    print("-" * len(header))
    warming: list[str] = []
    warm_rates: list[str] = []
    for streams in stream_counts:
        work = Workload(streams)
        river = bench_river(work, budget, streams)
        for label, kernels in KERNELS.items():
            engine_ids = build_engine(DEFAULT, streams, kernels)
            if label == "fused":
                warm_rates.append(f"{streams:,}: {fmt(warm_past_scales(*engine_ids, work))}")
            one, _, _ = bench_engine(*engine_ids, work, 1, budget)
            call, _ = round_us(*engine_ids, work)
            arrays, _ = arrays_round_us(*engine_ids, work)
            big, big_ids, _ = bench_engine(*engine_ids, work, 1_024, budget)
            if label == "torch" and (one.observations + big.observations) < streams * SCALE_WARMUP:
                warming.append(f"{streams:,}")
            ratios = ["-", "-", "-"]
            if river is not None:
                ratios = [
                    f"{big.per_second / river.per_second:.1f}",
                    f"{big.per_cpu_second / river.per_cpu_second:.1f}",
                    f"{big_ids.per_second / river.per_second:.1f}",
                ]
            print(
                f"{label:<7} {1:>7} {streams:>8,} {1e6 / one.per_second:>9.1f} "
                f"{1e6 / one.per_cpu_second:>7.1f} "
                f"{call:>5.1f} {arrays:>6.1f} "
                f"{fmt(one.per_second):>9} {fmt(big.per_second):>10} {fmt(big_ids.per_second):>9} "
                f"{fmt(river.per_second if river else None):>7} {ratios[0]:>8} {ratios[1]:>11} "
                f"{ratios[2]:>11}",
                flush=True,
            )
            if label == "fused" and cores > 1:
                _split_row(engine_ids, work, budget, cores, streams, river)
            del engine_ids
    print(
        f"the fused cells ran after every stream's first {SCALE_WARMUP} observations (the input scales'"
        " warm-up, which also folds every head into the scales being measured: tracking.fold), stepped"
        f" beforehand in batches of 4,096 at {', '.join(warm_rates)} obs/s"
    )
    if warming:
        print(
            f"at {' and '.join(warming)} streams the torch cells stepped fewer than {SCALE_WARMUP}"
            " observations per stream: they time mostly that warm-up"
        )
    cost = compile_cost()
    print("\ncompiling the kernel (float32 and float64), fresh processes:")
    for label, c in cost.items():
        print(f"  {label:<6}: import {c['import']:.2f} s, warm_up {c['warm_up']:.2f} s")
