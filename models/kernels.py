"""Which kernels a pool runs: the fused CPU kernels (numba) where they apply, the torch round otherwise.

``kernels="auto"`` (the default) picks a fused kernel on the CPU for float32 and float64 pools when numba
can be imported; ``"torch"`` forces the torch path (device-agnostic, the reference of the fused kernels).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch

__all__ = ["Kernels", "fused_applies"]

Kernels = Literal["auto", "torch"]


@functools.cache
def _numba_importable() -> bool:
    return importlib.util.find_spec("numba") is not None


def fused_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a fused CPU kernel can run a pool on ``device`` in ``dtype``."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and _numba_importable()
