"""What the first-order path's standardisation and naive mix cost: time per batch and state per stream.

Run: ``.venv/bin/python -m bench.standardize`` (``--reps`` batches per cell, default 200). Side by side in
one run, for each family: the default (``standardize`` and, for series, ``mix_naive`` on) against the same
spec with them off, all streams in one :class:`models.pool.StreamPool`, one batch of 1,024 observations of
1,024 distinct streams (one round) through ``StreamPool.observe``. Time is the minimum thread-CPU time of a
batch over the repetitions (load on other cores barely moves it), one torch thread.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from trackin.models.pool import StreamPool
from trackin.models.specs import StreamSpec

STREAMS = 1_024
FAMILIES: dict[str, dict[str, Any]] = {
    "linear 16, first order": {
        "model": {"family": "linear", "in_dim": 16},
        "optimizer": {"precondition": "none"},
    },
    "mlp 16-32-1": {"model": {"family": "mlp", "in_dim": 16, "hidden": [32]}},
    "ar lags 4, hidden 8": {"model": {"family": "ar", "dim": 1, "hidden": [8]}},
}


def _pool(spec: StreamSpec) -> tuple[StreamPool, np.ndarray]:
    pool = StreamPool(spec, capacity=STREAMS)
    slots = np.array([pool.add(spec) for _ in range(STREAMS)])
    return pool, slots


def measure(spec: StreamSpec, reps: int) -> tuple[float, float]:
    """Minimum thread-CPU seconds of one batch, and stacked state bytes per stream."""
    pool, slots = _pool(spec)
    rng = np.random.default_rng(0)
    series = spec.model.family == "ar"
    width = 1 if series else spec.model.in_dim  # type: ignore[union-attr]
    best = float("inf")
    for k in range(reps + 5):
        x = torch.from_numpy(rng.normal(size=(STREAMS, width)) * 100 + 1e3)
        y = None if series else torch.from_numpy(x[:, :1].numpy() * 0.3 + rng.normal(size=(STREAMS, 1)))
        start = time.thread_time()
        pool.observe(slots, x, y)
        if k >= 5:
            best = min(best, time.thread_time() - start)
    return best, pool.state_bytes() / pool.capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="batches per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = f"{'family':24} {'path':28} {'ms / batch':>10} {'obs/s':>10} {'B / stream':>10}"
    print(f"{head} {'x time':>7} {'x B':>6}")
    for name, raw in FAMILIES.items():
        default = StreamSpec.model_validate(raw)
        off = StreamSpec.model_validate({**raw, "standardize": False, "mix_naive": False})
        base_t, base_b = measure(off, args.reps)
        t, b = measure(default, args.reps)
        for label, (tt, bb) in (("raw units (standardize off)", (base_t, base_b)), ("default", (t, b))):
            print(
                f"{name:24} {label:28} {tt * 1e3:10.3f} {STREAMS / tt:10.0f} {bb:10.0f}"
                f" {tt / base_t:7.2f} {bb / base_b:6.2f}"
            )


if __name__ == "__main__":
    main()
