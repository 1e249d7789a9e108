"""Memory limits on streams: a per-stream cap checked on the spec, and the engine's total budget.

A spec's bytes are known before anything is allocated (``models.pool.slot_bytes``), so a spec too big for
one stream is refused at PUT (stream or template) with a 422 naming ``model``; the total budget is the
engine's own check (:class:`models.engine.MemoryBudgetError`), answered with a 507.
"""

from __future__ import annotations

import os
from pathlib import Path

from trackin.models.engine import MemoryBudgetError
from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.errors import OverBudget, StreamTooLarge

__all__ = ["check_stream_bytes", "over_budget", "process_memory_limit", "resolve_budget"]

_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def check_stream_bytes(
    spec: StreamSpec, cap: int, *, field: str = "model", stream: str | None = None
) -> None:
    """Refuse a spec whose one stream would hold more than ``cap`` bytes."""
    need = slot_bytes(spec)
    if need > cap:
        raise StreamTooLarge(
            f"one stream of this spec holds {need:,} bytes (parameters and optimizer state); the limit is "
            f"{cap:,} (TRACKIN_MAX_STREAM_BYTES)",
            field=field,
            stream=stream,
        )


def over_budget(error: MemoryBudgetError, stream: str | None) -> OverBudget:
    return OverBudget(f"memory budget: {error} (TRACKIN_MEMORY_BUDGET)", stream=stream)


def process_memory_limit() -> int:
    """Bytes this process may use: its cgroup's memory limit when there is one, else physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def resolve_budget(setting: int | str) -> int | None:
    """The engine's budget from ``TRACKIN_MEMORY_BUDGET``: bytes, ``auto`` (half of what this process may
    use: the rest is for requests, torch's workspace and the interpreter) or ``off``."""
    if setting == "off":
        return None
    if setting == "auto":
        return process_memory_limit() // 2
    return int(setting)
