"""How the process shares its cores: torch's intra-op threads, and how soon the engine thread gets the GIL.

The engine thread runs the fused kernels without the GIL, but needs it for a moment before and after each
call. While the event loop runs Python (decoding and checking the next request), CPython hands the GIL over
only after the switch interval: 5 ms by default, longer than a 1,000-observation engine call. The engine
thread then waited for the loop after nearly every call; in-process, a kernel thread beside a busy Python
loop took longer than the two run one after the other. At 0.2 ms they overlap (docs/engine.md, "The GIL's
switch interval").
"""

from __future__ import annotations

import sys

import torch

from trackin.service.settings import Settings

__all__ = ["configure_threads"]


def configure_threads(settings: Settings) -> None:
    """Apply ``torch_threads`` and ``gil_switch_interval_ms`` to this process (both are process-wide)."""
    torch.set_num_threads(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
