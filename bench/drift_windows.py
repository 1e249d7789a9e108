"""Where the tracking path loses against the tuned Kalman filter on the synthetic drifts, by window of steps.

Run: ``.venv/bin/python -m bench.drift_windows [VARIANTS]`` with ``VARIANTS`` a JSON list of
``[name, {constant: value}, {spec field: value}]`` (default: the defaults alone), e.g.
``'[["no mix", {}, {"mix_naive": false}], ["CLIP 3", {"CLIP": 3.0}, {}]]'``. Constants are those of
``models/tracking.py``, set on the module before the pools are made (the fused kernel reads them then);
each variant starts from the defaults. One ``linear`` in_dim 8 float64 stream per seed and task through
``Engine`` (the service's engine), as ``python -m bench.accuracy`` runs them. Prints, per variant, the mean of
the per-seed ratios to the per-task tuned Kalman filter and, per task, the cumulative squared error of each
window of steps (mean over seeds); the same for the filter first. Deterministic: compare any two runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
from torch import Tensor

from bench.accuracy_runners import run_filter
from bench.drift_tasks import DT, KALMAN_Q_GRID, NOISE, TASKS, make_streams
from trackin.models import tracking
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

WINDOWS = ((0, 10), (10, 20), (20, 50), (50, 2000), (2000, 2050), (2050, 5000))
CONSTANTS = (*(name for name in tracking.__all__ if name.isupper() and name != "HEADS"),)


def filter_errors(x: Tensor, y: Tensor, q: Tensor) -> Tensor:
    """Per-step squared errors ``[steps, streams]`` of the Kalman filter with state noise ``q`` per stream
    (the filter of ``run_filter``: prior N(0, I), noise variance NOISE^2)."""
    steps, streams, dim = x.shape
    eye = torch.eye(dim + 1, dtype=DT)
    cov, w = eye.repeat(streams, 1, 1), torch.zeros(streams, dim + 1, dtype=DT)
    ones, errors = torch.ones(streams, 1, dtype=DT), torch.zeros(steps, streams, dtype=DT)
    walk = q.view(-1, 1, 1) * eye
    for t in range(steps):
        h = torch.cat([x[t], ones], 1)
        cov = cov + walk
        ph = torch.bmm(cov, h.unsqueeze(2)).squeeze(2)
        gain = ph / ((h * ph).sum(1, keepdim=True) + NOISE**2)
        err = y[t] - (h * w).sum(1)
        errors[t] = err.square()
        w += gain * err.unsqueeze(1)
        cov = cov - gain.unsqueeze(2) * ph.unsqueeze(1)
        cov = 0.5 * (cov + cov.mT)
    return errors


def engine_errors(x: Tensor, y: Tensor, fields: dict[str, Any]) -> Tensor:
    """Per-step squared errors ``[steps, streams]`` of a user's ``linear`` spec (plus ``fields``)."""
    steps, streams, dim = x.shape
    engine = Engine("cpu")
    spec = StreamSpec.model_validate(
        {"model": {"family": "linear", "in_dim": dim}, "dtype": "float64", **fields}
    )
    ids = [f"s{s}" for s in range(streams)]
    for stream_id in ids:
        engine.add(stream_id, spec)
    errors = torch.zeros(steps, streams, dtype=DT)
    xs, ys = x.numpy(), y.numpy()
    for t in range(steps):
        results = engine.observe(ids, list(xs[t]), list(ys[t].reshape(-1, 1)))
        served = [r.prediction[0] if r.prediction else math.nan for r in results]
        errors[t] = (torch.tensor(served, dtype=DT) - y[t]).square()
    return errors


def windows(errors: Tensor, seeds: int) -> list[list[float]]:
    """Per task, the cumulative error of each window (mean over seeds)."""
    sums = [errors[a:b].sum(0).view(len(TASKS), seeds).mean(1) for a, b in WINDOWS]
    return [[float(s[k]) for s in sums] for k in range(len(TASKS))]


def show(name: str, table: list[list[float]]) -> None:
    for task, row in zip(TASKS, table, strict=True):
        print(
            f"    {name if task == TASKS[0] else '':28.28s} {task:12s} " + " ".join(f"{v:8.1f}" for v in row)
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drift_windows", description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="?", default='[["defaults", {}, {}]]', help="JSON, see above")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = make_streams(range(args.seeds), args.steps)
    grid = run_filter(x, y, [{"q": q, "forget": 1.0} for q in KALMAN_Q_GRID])  # [points, tasks, seeds]
    best = grid.mean(2).argmin(0)
    q = torch.tensor([KALMAN_Q_GRID[int(best[k])] for k in range(len(TASKS)) for _ in range(args.seeds)])
    kalman = filter_errors(x, y, q.to(DT))
    kalman_cum = kalman.sum(0).view(len(TASKS), args.seeds)
    print("windows: " + ", ".join(f"{a}-{b}" for a, b in WINDOWS))
    show("tuned Kalman filter", windows(kalman, args.seeds))
    defaults = {name: getattr(tracking, name) for name in CONSTANTS}
    try:
        for name, constants, fields in json.loads(args.variants):
            for key, value in {**defaults, **constants}.items():
                setattr(tracking, key, value)
            started = time.perf_counter()
            errors = engine_errors(x, y, fields)
            ratio = (errors.sum(0).view(len(TASKS), args.seeds) / kalman_cum).mean(1)
            geo = float(ratio.log().mean().exp())
            print(
                f"{name}: x Kalman {' / '.join(f'{r:.3f}' for r in ratio.tolist())}, geometric mean {geo:.3f}"
                f" ({time.perf_counter() - started:.0f} s)"
            )
            show("", windows(errors, args.seeds))
    finally:
        for key, value in defaults.items():
            setattr(tracking, key, value)


if __name__ == "__main__":
    main()
