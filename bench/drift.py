"""False alarms and detection delays of the drift detector, in one batched run.

Run: ``.venv/bin/python -m bench.drift [--delta D] [--threshold H] [--warmup W] [--steps T]``. Linear streams
with 4 inputs and unit Gaussian noise, TrackIn defaults: 200 stationary streams, and 100 streams for each
jump size whose target jumps by that many noise standard deviations halfway through. Prints the alarms on
stationary streams (and on the jumping ones before their jump) and, per jump size, the share flagged within
200 observations and the delay.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trackin.models.pool import StreamPool
from trackin.models.specs import DriftSpec, LinearModel, StreamSpec

JUMPS = (4.0, 6.0, 8.0, 10.0)
STATIONARY = 200
PER_JUMP = 100


def main() -> None:
    defaults = DriftSpec()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delta", type=float, default=defaults.delta)
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    drift = DriftSpec(delta=args.delta, threshold=args.threshold, warmup=args.warmup)
    spec = StreamSpec(model=LinearModel(in_dim=4), drift=drift)
    n = STATIONARY + PER_JUMP * len(JUMPS)
    pool = StreamPool(spec, capacity=n)
    slots = np.array([pool.add(spec) for _ in range(n)])
    rng = np.random.default_rng(0)
    w, c = rng.normal(size=(n, 4)), rng.normal(size=n)
    jump = np.zeros(n)
    for k, size in enumerate(JUMPS):
        jump[STATIONARY + PER_JUMP * k : STATIONARY + PER_JUMP * (k + 1)] = size
    at = args.steps // 2
    alarms = np.zeros((args.steps, n), dtype=bool)
    start = time.perf_counter()
    for t in range(args.steps):
        x = rng.normal(size=(n, 4))
        y = (x * w).sum(1) + c + rng.normal(size=n) + (jump if t >= at else 0.0)
        alarms[t] = pool.observe(slots, torch.from_numpy(x), torch.from_numpy(y[:, None])).drift.numpy()
    stationary = alarms[:, :STATIONARY]
    before = alarms[:at, STATIONARY:]
    false_alarms = int(stationary.sum()) + int(before.sum())
    print(
        f"delta={args.delta:g} threshold={args.threshold:g} warmup={args.warmup}: {false_alarms} false "
        f"alarms in {stationary.size + before.size:,} stationary stream-steps "
        f"({time.perf_counter() - start:.0f} s)"
    )
    for k, size in enumerate(JUMPS):
        after = alarms[at : at + 200, STATIONARY + PER_JUMP * k : STATIONARY + PER_JUMP * (k + 1)]
        flagged = after.any(0)
        delays = after.argmax(0)[flagged]
        summary = f"median delay {np.median(delays):.1f}, max {delays.max()}" if flagged.any() else "no delay"
        share = f"{int(flagged.sum())}/{PER_JUMP}"
        print(f"  jump of {size:g} sd: {share} flagged within 200 observations, {summary}")


if __name__ == "__main__":
    main()
