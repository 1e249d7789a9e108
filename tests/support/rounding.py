"""Another CPU's rounding, on this one: a torch function mode that moves kernel-dependent results by ulps.

Kernels for other instruction sets (MKL's AVX-512 GEMM, ATen's vector widths, fused multiply-adds) round
differently from this machine's, by an ulp or a few per operation. ``OtherRounding`` makes a code path round
differently here: every float result of a torch op run inside it whose rounding depends on the kernel (sums,
products, transcendental functions, fused kernels; see ``_ROUNDED``) is moved ``ulps`` units in the last
place up or down at random. Zeros, infinities and NaNs stay as they are, and so do the results of single
IEEE operations, which every CPU rounds alike. A comparison that passes with one path under
``OtherRounding(ulps=1)`` allows for any CPU's rounding; one that still passes with a large ``ulps`` is too
loose to notice a path computing at lower precision.

Example::

    with OtherRounding(seed=0):
        outcome = reference.observe(x, y)   # as another CPU would round it
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["OtherRounding"]

# Operations whose result may differ between CPUs (by name; in-place and operator forms included): sums and
# products of several terms (reduction order, vector width, fused multiply-adds), transcendental functions
# (vectorised and scalar approximations differ in the last ulp) and fused elementwise kernels. A single
# IEEE operation (+, -, *, /, sqrt) is correctly rounded on every CPU, and copies, views, indexing,
# comparisons, where and clamp are exact: those are left alone (add and sub only fuse with an ``alpha``).
_ROUNDED = frozenset(
    {
        "sum",
        "mean",
        "prod",
        "cumsum",
        "dot",
        "mv",
        "matmul",
        "rmatmul",
        "mm",
        "bmm",
        "addmm",
        "baddbmm",
        "addmv",
        "einsum",
        "linear",
        "norm",
        "vector_norm",
        "pow",
        "rpow",
        "exp",
        "expm1",
        "log",
        "log1p",
        "tanh",
        "sigmoid",
        "erf",
        "gelu",
        "softplus",
        "binary_cross_entropy_with_logits",
        "lerp",
        "addcmul",
        "addcdiv",
    }
)
_FUSED_WITH_ALPHA = frozenset({"add", "sub"})


class OtherRounding(TorchFunctionMode):
    """Move the result of every rounded float op run inside the mode by ``ulps`` ulps, up or down."""

    def __init__(self, seed: int = 0, ulps: int = 1) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.ulps = ulps
        self.moved = 0  # results moved so far: a mode that moves nothing proves nothing

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        base = name.strip("_")
        if name.startswith("__i"):
            base = base[1:]
        if base not in _ROUNDED and not (base in _FUSED_WITH_ALPHA and "alpha" in (kwargs or {})):
            return out
        if not isinstance(out, Tensor) or not out.dtype.is_floating_point or out.numel() == 0:
            return out
        # The mode is off inside __torch_function__: these ops are not moved themselves.
        with torch.no_grad():
            exact = out.detach()
            up = torch.rand(exact.shape, generator=self.generator) < 0.5
            target = torch.where(up, math.inf, -math.inf).to(exact.dtype)
            moved = exact + (torch.nextafter(exact, target) - exact) * self.ulps
            moved = torch.where(torch.isfinite(exact) & (exact != 0), moved, exact)
        self.moved += 1
        in_place = (name.endswith("_") and not name.startswith("__")) or name.startswith("__i")
        if in_place:
            with torch.no_grad():
                out.copy_(moved)
            return out
        if out.requires_grad:
            return out + (moved - exact)  # the same value as ``moved``, with the op's gradient
        return moved
