"""What a new stream's first observations cost against a later one's, side by side in one process.

Run: ``.venv/bin/python -m bench.young [--family linear track] [--streams 1000 10000] [--rounds 6]``.

A default stream (the tracking kernel, one thread) measures its scales over its first
``tracking.SCALE_WARMUP`` observations and re-expresses every head in them at each (the fold:
docs/engine.md, "Fifteenth session"). A fleet just created, or a camera's short object tracks, runs in that
phase. ``linear``: ``linear 16`` on ``bench.engine``'s workload; ``track``: ``{"model": {"family":
"track"}}`` streams taking boxes ``[cx, cy, w, h]`` that drift at a constant velocity plus noise, one
frame number (``ts``) per observation.

Each round builds a fresh pool of ``--streams`` streams and steps each of them ``SCALE_WARMUP`` times in
batches of 1,024 ("young"), then steps the same pool, now past its warm-up, for as many batches again
("steady"); the rates are process CPU time, and "young / steady" is the median of the per-round ratios of
the cost per observation, with their range. The pool's creation is not timed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.engine import DEFAULT, Workload, build_engine
from trackin.models.specs import StreamSpec
from trackin.models.tracking import SCALE_WARMUP

BATCH = 1_024
TRACK = StreamSpec.model_validate({"model": {"family": "track"}})


def cpu_rate(step: Callable[[int], None], batches: int, start: int) -> float:
    """Observations per CPU second of ``batches`` batches from the workload's ``start``-th."""
    began = time.process_time()
    for k in range(start, start + batches):
        step(k)
    return batches * BATCH / (time.process_time() - began)


def linear_steps(streams: int, work: Workload) -> Callable[[int], None]:
    """A fresh pool of default ``linear 16`` streams, and its ``k``-th batch from the workload."""
    engine, ids = build_engine(DEFAULT, streams)
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)

    def step(k: int) -> None:
        who, rows = work.window(k, BATCH)
        index = torch.from_numpy(rows)
        pool.observe(slots[who], work.x32.index_select(0, index), work.y32.index_select(0, index))

    return step


def track_steps(streams: int, work: Workload, batches: int) -> Callable[[int], None]:
    """A fresh pool of ``track`` streams, and its ``k``-th batch of boxes (made beforehand, untimed): the
    same arrival order as ``linear``, each arrival the stream's next frame."""
    engine, ids = build_engine(TRACK, streams)
    (pool,) = engine.pools
    slots = np.array([engine.locate(i).slot for i in ids], dtype=np.int64)
    rng = np.random.default_rng(1)
    start, velocity = rng.uniform(100, 1000, size=(streams, 4)), rng.normal(size=(streams, 4))
    frames = np.zeros(streams)
    made = []
    for k in range(batches):
        who, _ = work.window(k, BATCH)
        ts = np.empty(BATCH)
        for n, stream in enumerate(who.tolist()):  # a stream twice in a batch: two frames
            frames[stream] += 1
            ts[n] = frames[stream]
        boxes = start[who] + velocity[who] * ts[:, None] + rng.normal(size=(BATCH, 4))
        made.append((slots[who], torch.from_numpy(boxes).float(), torch.from_numpy(ts).float()))

    def step(k: int) -> None:
        rows, boxes, ts = made[k]
        pool.observe(rows, boxes, None, ts)

    return step


def one_round(family: str, streams: int, work: Workload) -> tuple[float, float]:
    """A fresh pool's rate over its streams' first ``SCALE_WARMUP`` observations, then past them."""
    batches = streams * SCALE_WARMUP // BATCH  # every stream about SCALE_WARMUP times (arrivals are shuffled)
    step = linear_steps(streams, work) if family == "linear" else track_steps(streams, work, 2 * batches)
    young = cpu_rate(step, batches, 0)
    steady = cpu_rate(step, batches, batches)
    return young, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=["linear", "track"], default=["linear", "track"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"bench.young: the default spec of each family, batches of {BATCH:,}, one thread, process CPU time;"
        f" scale warm-up {SCALE_WARMUP} observations; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'family':>8} {'streams':>8} {'young obs/s':>11} {'steady obs/s':>12} {'young us':>8}"
        f" {'steady us':>9} {'young / steady':>14}"
    )
    for family in args.family:
        one_round(family, 1_000, Workload(1_000))  # kernels loaded, allocator warm
        for streams in args.streams:
            work = Workload(streams)
            rounds = [one_round(family, streams, work) for _ in range(args.rounds)]
            young, steady = (np.array(rates) for rates in zip(*rounds, strict=True))
            ratios = steady / young  # cost per observation, young over steady
            mid_young, mid_steady = float(np.median(young)), float(np.median(steady))
            print(
                f"{family:>8} {streams:>8,} {mid_young / 1e3:>10.0f}k {mid_steady / 1e3:>11.0f}k"
                f" {1e6 / mid_young:>8.2f} {1e6 / mid_steady:>9.2f}"
                f" {np.median(ratios):>6.2f}x {ratios.min():.2f}-{ratios.max():.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
