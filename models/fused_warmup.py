"""Compile the fused kernels before the first request: one throwaway pool per signature, one step each.

numba compiles a kernel on its first call for each signature (the pool's dtype), which costs seconds
without the on-disk cache (docs/engine.md, "Fused kernels"). A service calls :func:`warm_up` at start-up so
no request pays it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from trackin.models.kernels import Kernels, fused_applies
from trackin.models.pool import StreamPool
from trackin.models.specs import LinearModel, SGDSpec, StreamSpec

__all__ = ["WARM_SPECS", "warm_up"]

WARM_SPECS: tuple[StreamSpec, ...] = tuple(
    StreamSpec(
        model=LinearModel(in_dim=1),
        optimizer=SGDSpec(),  # type: ignore[arg-type]
        dtype=dtype,  # the defaults otherwise: standardised (every path of the kernel is in one signature)
    )
    for dtype in ("float32", "float64")
)
"""One tiny spec per compiled signature of the first-order kernels (``observe_rows``, ``predict_rows``):
every first-order closed-form pool of a dtype that they run shares one, standardised or not, mixed or not.
The tracking kernel (the default path) compiles with its own ``warm_up``."""


def warm_up(device: torch.device | str = "cpu", kernels: Kernels = "auto") -> dict[str, float]:
    """Step (and predict) one throwaway stream of each of :data:`WARM_SPECS` whose pool runs a fused kernel;
    returns the seconds each took (its compilation, or loading it from numba's cache), by dtype."""
    spent: dict[str, float] = {}
    for spec in WARM_SPECS:
        pool = StreamPool(spec, device, capacity=1, kernels=kernels)
        if not pool.fused:
            continue
        slot = pool.add(spec)
        started = time.perf_counter()
        pool.observe(np.array([slot]), torch.zeros(1, 1), torch.zeros(1, 1))
        pool.predict(np.array([slot]), torch.zeros(1, 1))
        spent[spec.dtype] = spent.get(spec.dtype, 0.0) + time.perf_counter() - started
    if kernels == "auto" and fused_applies(torch.device(device), torch.float32):
        from trackin.models import fused_tracking  # numba: imported when used

        spent["tracking"] = fused_tracking.warm_up()
    return spent
