"""Which implementation steps a pool: the fused CPU kernels (numba) or the device-agnostic torch rounds.

``kernels="auto"`` (the default of :class:`models.engine.Engine` and :class:`models.pool.StreamPool`) takes
a fused round wherever one applies: the pool is on the CPU, its dtype is float32 or float64, and numba is
importable. ``"torch"`` forces the torch rounds (the service's ``TRACKIN_KERNELS=torch``). Which families
have a fused round is the pool's business (docs/engine.md, "Fused kernels").
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch

__all__ = ["Kernels", "fused_applies", "numba_available"]

Kernels = Literal["auto", "torch"]
"""``auto``: fused kernels where they apply; ``torch``: always the torch rounds."""


@functools.cache
def numba_available() -> bool:
    """numba can be imported (it is a dependency; a build without it falls back to the torch path)."""
    return importlib.util.find_spec("numba") is not None


def fused_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """A fused kernel can step a pool on ``device`` holding ``dtype``: the CPU, float32 or float64, numba."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and numba_available()
