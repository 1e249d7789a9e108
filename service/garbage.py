"""The cyclic garbage collector in a server: what lives as long as the process is kept out of its scans,
and its pauses are timed for /metrics.

A full (generation 2) collection walks every tracked object, and the event loop and the engine thread
both wait while it runs. Compiling the kernels at start-up (numba's dispatchers, type caches and the
like, made in the warm-up thread) leaves about 60,000 objects that live as long as the process; with them
in generation 2 every full collection took about 25 ms, several times a second under batched load.
`freeze_long_lived` runs once at readiness: one collection of what is already garbage, then `gc.freeze`
moves everything alive to the permanent generation, which collections skip. Full collections then scan
what was made since: about 2 ms.

Young collections are set off by net allocations of container objects: CPython's threshold of 700 set off
several per batched request (a request of 1,000 observations holds thousands of lists and dicts while it
is decoded), each scanning the request's live objects and promoting them. `configure_collections` raises
it (``gc_young_threshold``, 10,000): a request's objects are then freed by reference counting before a
collection sees them, and cyclic garbage is still collected every 10,000 net allocations (docs/engine.md,
"Tenth session").
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

__all__ = ["CollectionTimer", "configure_collections", "freeze_long_lived"]


def configure_collections(young_threshold: int) -> None:
    """Collect the young generation after ``young_threshold`` net container allocations (process-wide)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def freeze_long_lived() -> int:
    """Collect once, then keep every object alive now out of later collections; the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class CollectionTimer:
    """Times each collection into ``histogram`` (labelled by generation) through `gc.callbacks`.

    The callback runs in whichever thread's allocation started the collection, holding the GIL; it costs
    two clock reads and one observation per collection."""

    def __init__(self, histogram: Histogram) -> None:
        self._by_generation = [histogram.labels(generation) for generation in "012"]
        self._started = 0.0

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def remove(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)
