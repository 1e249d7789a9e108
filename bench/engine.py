"""Throughput of the batched engine against per-stream baselines, and resident bytes per stream.

Run: ``.venv/bin/python -m bench.engine`` (``--budget`` seconds per cell, default 1; ``--quick`` for a
smoke run). Side by side in one run:

(a) ``module``: one :class:`models.families.FamilyModule` and one :class:`models.trackin.TrackIn` per stream,
    stepped one observation at a time (forward, loss, backward, step);
(b) ``river``: one River ``linear_model.LinearRegression`` per stream, ``predict_one`` then ``learn_one``
    (linear only; River has no counterpart of the MLP);
(c) ``engine``: all streams in one :class:`models.pool.StreamPool` with the full TrackIn update, batches
    through the tensor API (``StreamPool.observe``: slots and stacked inputs), through the ids API
    (``Engine.observe_arrays``: stream ids, ``x [n, d]`` and ``y [n, 1]`` arrays in, columns out: the
    service's call) and through the items API (``Engine.observe``: one array per item in, one
    ``ItemResult`` per item out), with the default
    kernels (``auto``: the fused CPU kernel where one applies, docs/engine.md "Fused kernels");
(d) ``torch``: the same tensor API with ``kernels="torch"`` (the device-agnostic torch rounds), so each
    row shows the fused kernel and the torch path side by side (``x torch``), and ``us/call``: the process
    CPU time of one ``observe`` call (at batch 1: one round of one stream) for both.

The default ``linear 16`` runs the fused CPU kernel (:mod:`models.fused_tracking`); a last section
(:mod:`bench.engine_fused`; ``--fused`` runs it alone) puts it beside the torch round of the same path, at
batch 1 (microseconds per round) and 1,024 (against River), and measures what compiling the kernel costs.

Streams arrive at equal rates in shuffled order (concatenated random permutations of all streams), so a
batch holds a stream more than once only when the batch is larger than the stream count (1,024 of 1,000
streams: two rounds). Every cell runs for a fixed time budget, not a fixed count. The per-stream baselines
do not depend on the batch size (they take one observation at a time), so they are measured once per
family, stream count and thread setting and shown on every batch row; River is pure Python and ignores
torch's threads. The memory figures come from fresh child processes (RSS from /proc/self/statm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trackin.models.engine import Engine
from trackin.models.families import FamilyModule
from trackin.models.kernels import Kernels
from trackin.models.losses import loss_per_row
from trackin.models.pool import StreamPool
from trackin.models.specs import LinearModel, MLPModel, StreamSpec, TrackModel
from trackin.models.trackin import TrackIn

IN_DIM = 16
DEFAULT = StreamSpec(model=LinearModel(in_dim=IN_DIM))  # the default: scale-free, RLS-preconditioned
FAMILIES: dict[str, StreamSpec] = {
    "linear 16": DEFAULT,  # the fused CPU kernel (models/fused_tracking.py); five RLS heads
    "linear 16, one head": StreamSpec.model_validate(
        {"model": {"family": "linear", "in_dim": IN_DIM}, "optimizer": {"forget": 0.999}}
    ),
    "linear 16, first order": StreamSpec.model_validate(
        {"model": {"family": "linear", "in_dim": IN_DIM}, "optimizer": {"precondition": "none"}}
    ),
    "mlp 16-32-1": StreamSpec(model=MLPModel(in_dim=IN_DIM, hidden=(32,))),
}
STREAMS = (1_000, 10_000, 100_000)
BATCHES = (1, 64, 1_024)
MEMORY_STREAMS = 1_000_000
DATA_ROWS = 8_192


@dataclass
class Rate:
    """Observations per second over a timed run (wall clock and process CPU time)."""

    observations: int
    wall: float
    cpu: float

    @property
    def per_second(self) -> float:
        return self.observations / self.wall

    @property
    def per_cpu_second(self) -> float:
        return self.observations / max(self.cpu, 1e-9)


def timed(step: Callable[[int], int], budget: float, warmup: int = 2) -> Rate:
    """Call ``step(k)`` (returns observations done) until ``budget`` seconds have passed."""
    for k in range(warmup):
        step(k)
    done, k = 0, warmup
    wall, cpu = time.perf_counter(), time.process_time()
    while True:
        done += step(k)
        k += 1
        elapsed = time.perf_counter() - wall
        if elapsed >= budget:
            return Rate(done, elapsed, time.process_time() - cpu)


class Workload:
    """Arrival order of streams and the data of each arrival, cycled."""

    def __init__(self, streams: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        reps = max(2, -(-4 * DATA_ROWS // streams))
        self.order = np.concatenate([rng.permutation(streams) for _ in range(reps)])
        self.x = rng.normal(size=(DATA_ROWS, IN_DIM))
        self.y = self.x @ rng.normal(size=IN_DIM) + 0.1 * rng.normal(size=DATA_ROWS)
        self.x32 = torch.from_numpy(self.x).float()
        self.y32 = torch.from_numpy(self.y).float().unsqueeze(1)

    def window(self, k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The k-th batch: stream indices and data rows."""
        start = (k * size) % (len(self.order) - size)
        rows = (np.arange(start, start + size)) % DATA_ROWS
        return self.order[start : start + size], rows


def bench_module(spec: StreamSpec, work: Workload, budget: float) -> Rate:
    """(a) One module + TrackIn per stream, created on first use outside the timed part."""
    touched = work.order[:5_000]
    modules: dict[int, tuple[FamilyModule, TrackIn]] = {}
    for s in np.unique(touched):
        assert not isinstance(spec.model, TrackModel)
        module = FamilyModule(spec.model)
        modules[int(s)] = (module, TrackIn(module.parameters()))

    def step(k: int) -> int:
        stream = int(touched[k % len(touched)])
        module, opt = modules[stream]
        row = k % DATA_ROWS
        x, y = work.x32[row : row + 1], work.y32[row : row + 1]
        opt.zero_grad(set_to_none=True)
        output = module(x)
        loss = loss_per_row("mse", output, y)
        loss.sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
        return 1

    return timed(step, budget)


def bench_river(work: Workload, budget: float, streams: int) -> Rate | None:
    """(b) One River LinearRegression per stream (predict_one, then learn_one)."""
    try:
        from river import linear_model
    except ImportError:
        return None
    touched = work.order[:400_000]
    models = [linear_model.LinearRegression() for _ in range(min(streams, len(touched)))]
    rows = [dict(enumerate(r)) for r in work.x.tolist()]
    ys = work.y.tolist()

    def step(k: int) -> int:
        base = k * 256
        for j in range(base, base + 256):
            model = models[touched[j % len(touched)] % len(models)]
            x = rows[j % DATA_ROWS]
            model.predict_one(x)
            model.learn_one(x, ys[j % DATA_ROWS])
        return 256

    return timed(step, budget)


def build_engine(spec: StreamSpec, streams: int, kernels: Kernels = "auto") -> tuple[Engine, list[str]]:
    engine = Engine(kernels=kernels)
    ids = [f"stream-{i}" for i in range(streams)]
    for stream_id in ids:
        engine.add(stream_id, spec)
    return engine, ids


def bench_tensor(engine: Engine, ids: list[str], work: Workload, batch: int, budget: float) -> Rate:
    """(c, d) The tensor API alone (slots, stacked inputs)."""
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)

    def tensor_step(k: int) -> int:
        who, rows = work.window(k, batch)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))
        return batch

    return timed(tensor_step, budget)


def round_us(engine: Engine, ids: list[str], work: Workload, calls: int = 3_000) -> tuple[float, float]:
    """Microseconds of one ``StreamPool.observe`` of one observation (one round of one stream), inputs
    prepared beforehand: the minimum (the cost itself, what load on the machine cannot shrink) and the
    median over ``calls`` calls."""
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)
    inputs = [
        (slots[work.order[k : k + 1]], work.x32[k : k + 1].clone(), work.y32[k : k + 1].clone())
        for k in range(64)
    ]
    for s, x, y in inputs:
        pool.observe(s, x, y)
    spent = np.empty(calls)
    clock = time.perf_counter
    for k in range(calls):
        s, x, y = inputs[k % 64]
        started = clock()
        pool.observe(s, x, y)
        spent[k] = clock() - started
    return float(spent.min() * 1e6), float(np.median(spent) * 1e6)


def arrays_round_us(
    engine: Engine, ids: list[str], work: Workload, calls: int = 3_000
) -> tuple[float, float]:
    """`round_us` through ``Engine.observe_arrays`` (the service's call: one stream id, ``x [1, d]`` and
    ``y [1, 1]`` float64 arrays in, arrays out), inputs prepared beforehand: min and median, microseconds."""
    inputs = [
        ([ids[work.order[k]]], work.x[k : k + 1].copy(), work.y[k : k + 1, None].copy()) for k in range(64)
    ]
    for one, x, y in inputs:
        engine.observe_arrays(one, x, y)
    spent = np.empty(calls)
    clock = time.perf_counter
    for k in range(calls):
        one, x, y = inputs[k % 64]
        started = clock()
        engine.observe_arrays(one, x, y)
        spent[k] = clock() - started
    return float(spent.min() * 1e6), float(np.median(spent) * 1e6)


def bench_engine(
    engine: Engine, ids: list[str], work: Workload, batch: int, budget: float
) -> tuple[Rate, Rate, Rate]:
    """(c) The engine: tensor API (slots, stacked inputs), ids API on arrays (``Engine.observe_arrays``: ids,
    ``x [n, d]`` and ``y [n, 1]`` float64 in, columns out: the service's call) and ids API on items
    (``Engine.observe``: per-item arrays in, one ``ItemResult`` per item out)."""
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)
    items_x = list(work.x)
    items_y = list(work.y.reshape(-1, 1))

    def tensor_step(k: int) -> int:
        who, rows = work.window(k, batch)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))
        return batch

    def id_step(k: int) -> int:
        who, rows = work.window(k, batch)
        engine.observe([ids[i] for i in who], [items_x[r] for r in rows], [items_y[r] for r in rows])
        return batch

    y64 = work.y.reshape(-1, 1)

    def arrays_step(k: int) -> int:
        who, rows = work.window(k, batch)
        engine.observe_arrays([ids[i] for i in who], work.x[rows], y64[rows])
        return batch

    return timed(tensor_step, budget), timed(arrays_step, budget), timed(id_step, budget)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(mode: str, streams: int) -> dict[str, float]:
    """Resident bytes per stream at ``streams`` linear streams (run in a fresh process)."""
    spec = FAMILIES["linear 16"]
    torch.zeros(1).add_(1)  # load torch's kernels before the baseline reading
    before = _resident_bytes()
    if mode == "engine":
        engine = Engine()
        for i in range(streams):
            engine.add(f"stream-{i:07d}", spec)
        (pool,) = engine.pools
    else:
        pool = StreamPool(spec)
        for _ in range(streams):
            pool.add(spec)
    grown = _resident_bytes() - before
    learnable = [k for k in pool.state if k.startswith(("param/", "opt/"))]
    raw = sum(pool.state[k][0].numel() * pool.state[k].element_size() for k in learnable)
    every_key = sum(t[0].numel() * t.element_size() for t in pool.state.values())
    return {
        "rss_per_stream": grown / streams,
        "state_bytes_per_stream": pool.state_bytes() / streams,
        "row_bytes": every_key,
        "padded_row_bytes": pool.state_bytes() / pool.capacity,
        "learnable_bytes": raw,
        "capacity": pool.capacity,
    }


def run_memory(streams: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("pool", "engine"):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.engine", "--memory-child", mode, "--streams", str(streams)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


_WARM_CHILD = """
import json, time
wall, cpu = time.perf_counter(), time.process_time()
from trackin.models.fused_warmup import warm_up
imported = time.perf_counter() - wall
spent = warm_up()
print(json.dumps({"import_s": imported, "warm_up_s": sum(spent.values()), "by_dtype": spent,
                  "cpu_s": time.process_time() - cpu}))
"""


def run_warm_up() -> None:
    """The start-up cost of the fused kernels: a fresh process with an empty numba cache (compiling both
    signatures), then another one that finds them in the cache (a temporary ``NUMBA_CACHE_DIR``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("no cache (compiles)", "numba's on-disk cache"):
            proc = subprocess.run(
                [sys.executable, "-c", _WARM_CHILD], capture_output=True, text=True, check=True, env=env
            )
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            per = ", ".join(f"{k} {v:.2f} s" for k, v in m["by_dtype"].items())
            print(
                f"  warm-up, {label}: {m['warm_up_s']:.2f} s wall ({per}); process CPU {m['cpu_s']:.2f} s "
                f"including imports ({m['import_s']:.2f} s wall)"
            )


def fmt(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}k" if rate >= 1e3 else f"{rate:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small budgets, 1,000 streams")
    parser.add_argument("--memory-child", choices=["pool", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=MEMORY_STREAMS, help="streams for the memory figure")
    parser.add_argument("--fused", action="store_true", help="only the tracking kernel vs the torch round")
    parser.add_argument(
        "--family", action="append", help="only families whose name contains this (repeatable)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the resident-memory figures")
    parser.add_argument(
        "--warm-up", action="store_true", help="only the fused kernels' start-up cost (fresh processes)"
    )
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.streams)))
        return
    if args.warm_up:
        print(f"bench.engine --warm-up: load average {os.getloadavg()[0]:.2f}")
        run_warm_up()
        return
    budget = 0.2 if args.quick else args.budget
    stream_counts = (1_000,) if args.quick else STREAMS
    from bench import engine_fused  # it imports this module: here, not at the top

    if args.fused:
        engine_fused.run(budget, stream_counts)
        return
    all_threads = os.cpu_count() or 1
    thread_settings = sorted({1, all_threads})
    print(
        f"bench.engine: torch {torch.__version__}, {all_threads} cores, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  {budget:g} s per cell; obs/s by wall clock ('cpu x river': the ratio of process-CPU-time rates,"
    )
    print("  one-thread cells only: less sensitive to other load on the machine)")
    print("  module/river are per-observation loops, measured once per family x streams x threads")
    print(
        "  engine = StreamPool.observe (tensor API), default kernels (fused where one applies); torch = the"
    )
    print(
        "  same with kernels='torch'; eng-arr = Engine.observe_arrays (the ids API: ids, x [n, d], y [n, 1]"
    )
    print(
        "  in, columns out), eng-items = Engine.observe (per-item arrays in, ItemResults out), default"
        " kernels;"
    )
    print("  us/call = microseconds of process CPU time per observe call (batch 1: one round),")
    print("  engine / torch (with 2 threads the CPU time of both; compare the one-thread rows)")
    header = (
        f"{'family':<22} {'streams':>8} {'batch':>5} {'thr':>3} {'module':>7} {'river':>7} {'engine':>7} "
        f"{'torch':>7} {'eng-arr':>7} {'eng-items':>9} {'us/call':>15} {'x torch':>7} {'x module':>8} "
        f"{'x river':>7} {'cpu x river':>11} {'ids x river':>11} {'ids cpu x':>9} {'items x':>7}"
    )
    print(header)
    print("-" * len(header))
    for family, spec in FAMILIES.items():
        if args.family and not any(f in family for f in args.family):
            continue
        for streams in stream_counts:
            work = Workload(streams)
            engine_ids = build_engine(spec, streams)
            torch_ids = build_engine(spec, streams, kernels="torch")
            river = bench_river(work, budget, streams) if family.startswith("linear") else None
            for threads in thread_settings:
                torch.set_num_threads(threads)
                module = bench_module(spec, work, budget)
                for batch in BATCHES:
                    engine, by_arrays, by_items = bench_engine(*engine_ids, work, batch, budget)
                    plain = bench_tensor(*torch_ids, work, batch, budget)
                    ratios = ["-"] * 5
                    if river is not None:
                        one_thread = threads == 1
                        ratios = [
                            f"{engine.per_second / river.per_second:.1f}",
                            f"{engine.per_cpu_second / river.per_cpu_second:.1f}" if one_thread else "",
                            f"{by_arrays.per_second / river.per_second:.1f}",
                            f"{by_arrays.per_cpu_second / river.per_cpu_second:.1f}" if one_thread else "",
                            f"{by_items.per_second / river.per_second:.1f}",
                        ]
                    fused_us, torch_us = (1e6 * batch / r.per_cpu_second for r in (engine, plain))
                    calls = f"{fused_us:.1f} / {torch_us:.0f}"
                    print(
                        f"{family:<22} {streams:>8,} {batch:>5} {threads:>3} {fmt(module.per_second):>7} "
                        f"{fmt(river.per_second if river else None):>7} {fmt(engine.per_second):>7} "
                        f"{fmt(plain.per_second):>7} {fmt(by_arrays.per_second):>7} "
                        f"{fmt(by_items.per_second):>9} {calls:>15} "
                        f"{engine.per_second / plain.per_second:>7.1f} "
                        f"{engine.per_second / module.per_second:>8.0f} "
                        f"{ratios[0]:>7} {ratios[1]:>11} {ratios[2]:>11} {ratios[3]:>9} {ratios[4]:>7}",
                        flush=True,
                    )
            del engine_ids, torch_ids
    torch.set_num_threads(1)
    print(
        "\nbatch-1 round: one StreamPool.observe of one observation, us (min / median of 3,000 calls, "
        "1 thread); arrays: the same through Engine.observe_arrays (ids and float64 arrays in and out)"
    )
    print(f"{'family':<22} {'streams':>8} {'engine':>15} {'torch':>15} {'x torch (min)':>13} {'arrays':>15}")
    for family, spec in FAMILIES.items():
        if args.family and not any(f in family for f in args.family):
            continue
        work = Workload(1_000)
        engine_ids = build_engine(spec, 1_000)
        best, median = round_us(*engine_ids, work)
        torch_best, torch_median = round_us(*build_engine(spec, 1_000, kernels="torch"), work)
        arrays_best, arrays_median = arrays_round_us(*engine_ids, work)
        print(
            f"{family:<22} {1_000:>8,} {best:>7.1f} / {median:<5.1f} "
            f"{torch_best:>7.1f} / {torch_median:<5.1f} {torch_best / best:>13.1f} "
            f"{arrays_best:>7.1f} / {arrays_median:<5.1f}",
            flush=True,
        )
    engine_fused.run(budget, stream_counts)
    torch.set_num_threads(all_threads)
    if args.no_memory:
        return
    memory_streams = 10_000 if args.quick else args.streams
    print(f"\nresident memory at {memory_streams:,} linear streams (TrackIn, float32), fresh processes:")
    for mode, m in run_memory(memory_streams).items():
        print(
            f"  {mode:<6}: RSS growth {m['rss_per_stream']:.0f} B/stream; "
            f"stacked state {m['row_bytes']:.0f} B/row "
            f"({m['padded_row_bytes']:.0f} padded, {m['state_bytes_per_stream']:.0f} B/stream at capacity "
            f"{int(m['capacity']):,}); learnable (params + optimizer state) {m['learnable_bytes']:.0f} B. "
            f"RSS / stacked state {m['rss_per_stream'] / m['row_bytes']:.2f}x, "
            f"RSS / learnable {m['rss_per_stream'] / m['learnable_bytes']:.2f}x"
        )


if __name__ == "__main__":
    main()
