"""The synthetic drifting regressions of ``python -m bench.accuracy``: three tasks, streams of many seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ADAM_LR_GRID",
    "DIM",
    "DT",
    "ETA_ON",
    "KALMAN_Q_GRID",
    "LR_GRID",
    "NOISE",
    "RLS_FORGET_GRID",
    "TASKS",
    "TUNE_SEED_OFFSET",
    "Setting",
    "make_streams",
]

DIM = 8
NOISE = 0.1
WALK = 0.01
JUMP_AT = 2000
VELOCITY = 0.001
PERIOD = 1000.0
TASKS = ("walk+jump", "velocity", "oscillation")
TUNE_SEED_OFFSET = 1000
DT = torch.float64

LR_GRID = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1)
ADAM_LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
KALMAN_Q_GRID = tuple(10.0 ** (k / 2) for k in range(-14, -3))  # 1e-7 ... 1e-2, half decades
RLS_FORGET_GRID = (0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
ETA_ON = {"eta": 0.001, "eps_decay": 0.9}
"""The eps setting of the "eta on" rows (the best eta > 0 of ``--tune``)."""

Setting = dict[str, Any]


def _stream(task: str, seed: int, steps: int) -> tuple[Tensor, Tensor]:
    """One stream of ``task``: inputs ``[steps, DIM]`` and targets ``[steps]``."""
    gen = torch.Generator().manual_seed(seed * len(TASKS) + TASKS.index(task))
    w0 = torch.randn(DIM, generator=gen, dtype=DT)
    t = torch.arange(steps, dtype=DT).unsqueeze(1)
    if task == "walk+jump":
        w = w0 + WALK * torch.randn(steps, DIM, generator=gen, dtype=DT).cumsum(0)
        w[JUMP_AT:] += torch.randn(DIM, generator=gen, dtype=DT)
    elif task == "velocity":
        w = w0 + VELOCITY * torch.randn(DIM, generator=gen, dtype=DT) * t
    else:
        phase = 2 * math.pi * torch.rand(DIM, generator=gen, dtype=DT)
        w = w0 + torch.sin(2 * math.pi * t / PERIOD + phase)
    x = torch.randn(steps, DIM, generator=gen, dtype=DT)
    y = (w * x).sum(1) + NOISE * torch.randn(steps, generator=gen, dtype=DT)
    return x, y


def make_streams(seeds: Sequence[int], steps: int) -> tuple[Tensor, Tensor]:
    """All tasks' streams, task-major: inputs ``[steps, streams, DIM]``, targets ``[steps, streams]``."""
    pairs = [_stream(task, seed, steps) for task in TASKS for seed in seeds]
    return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)


# ---------------------------------------------------------------------------------------------------------
# Runners: each returns the cumulative squared error per (grid point, task, seed).
# ---------------------------------------------------------------------------------------------------------
