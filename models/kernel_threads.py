"""A fused kernel's batch split over the engine's intra-op threads, as runs of rows that share no stream.

Streams are independent, and a kernel call steps only the rows it is given, in their order, touching only
their slots' state and their outcomes. So a batch cut into runs that share no stream, each stream's rows in
their order within one run, can be stepped by several calls at once (the kernels hold no GIL), and gives
one call's outcomes and state to the bit. The thread count is the engine's intra-op threads
(``torch.get_num_threads()``, as for the torch rounds; the service's ``TRACKIN_TORCH_THREADS``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from numba import njit

__all__ = ["ROWS_PER_THREAD", "deal_by_slot", "run_split", "split_batch", "split_by_stream", "threads_for"]

ROWS_PER_THREAD = 128
"""At most one thread per this many rows of the tracking kernel (about 1 us a row): handing a run to a
thread costs tens of microseconds, so batches under 256 rows are never split (two threads, in-process, 1,000
default streams: 1.35-1.44x at 256 rows, 1.52-1.69x at 1,024, 1.88-2.00x at 4,096)."""
_HELPERS: dict[int, ThreadPoolExecutor] = {}
# A forked child has none of its parent's threads: it starts its own helpers (an inherited executor would
# take the runs and never step them).
os.register_at_fork(after_in_child=_HELPERS.clear)


def threads_for(rows: int, rows_per_thread: int = ROWS_PER_THREAD) -> int:
    """How many runs a batch of ``rows`` is stepped in (1: one call, on the caller's thread); a kernel
    cheaper per row than the tracking kernel needs more rows per thread to gain."""
    if rows < 2 * rows_per_thread:
        return 1
    return min(torch.get_num_threads(), rows // rows_per_thread)


@njit(cache=True, nogil=True)
def split_by_stream(slots: np.ndarray, order: np.ndarray, parts: int, bounds: np.ndarray) -> None:
    """Cut ``order`` (row indices in slot order) into ``parts`` runs that share no slot, run ``t`` from
    ``bounds[t]`` to ``bounds[t + 1]``: near equal lengths, each cut moved on to where the slot changes,
    so each thread walks its own range of the buffers."""
    n = order.shape[0]
    bounds[0] = 0
    for t in range(1, parts):
        cut = max(bounds[t - 1], n * t // parts)
        while 0 < cut < n and slots[order[cut]] == slots[order[cut - 1]]:
            cut += 1
        bounds[t] = cut
    bounds[parts] = n


@njit(cache=True, nogil=True)
def deal_by_slot(slots: np.ndarray, parts: int, order: np.ndarray, bounds: np.ndarray) -> None:
    """``order``: the row indices grouped by ``slot % parts`` (a stable counting sort: each slot's rows in
    their order), group ``t`` from ``bounds[t]`` to ``bounds[t + 1]``: runs that share no slot, in arrival
    order within each."""
    bounds[:] = 0
    for q in range(slots.shape[0]):
        bounds[slots[q] % parts + 1] += 1
    for t in range(parts):
        bounds[t + 1] += bounds[t]
    fill = bounds[:parts].copy()
    for q in range(slots.shape[0]):
        t = slots[q] % parts
        order[fill[t]] = q
        fill[t] += 1


def split_batch(slots: np.ndarray, order: np.ndarray | None, parts: int) -> list[np.ndarray]:
    """A batch's rows as up to ``parts`` non-empty runs (row indices) that share no stream, each stream's
    rows in their order: ``order`` (the rows in slot order) cut at slot boundaries, or (None) the rows
    dealt by slot."""
    bounds = np.empty(parts + 1, dtype=np.int64)
    if order is None:
        order = np.empty(slots.shape[0], dtype=np.int64)
        deal_by_slot(slots, parts, order, bounds)
    else:
        split_by_stream(slots, order, parts, bounds)
    return [order[bounds[t] : bounds[t + 1]] for t in range(parts) if bounds[t + 1] > bounds[t]]


def _helpers(count: int) -> ThreadPoolExecutor:
    """The process's threads that step a split batch's runs beside the caller (started on first use)."""
    pool = _HELPERS.get(count)
    if pool is None:
        pool = _HELPERS[count] = ThreadPoolExecutor(count, thread_name_prefix="trackin-kernel")
    return pool


def run_split(entry: Callable[..., None], args: tuple[Any, ...], runs: list[np.ndarray]) -> None:
    """``entry(*args, run)`` for each run at once, the first on the caller's thread, the others on helper
    threads; returns once every run has finished, also when one failed (then raising its error)."""
    pool = _helpers(len(runs) - 1)
    futures: list[Future[None]] = [pool.submit(entry, *args, run) for run in runs[1:]]
    try:
        entry(*args, runs[0])
    finally:
        for future in futures:  # every run finishes before the buffers are read, error or not
            future.result()


def warm_up() -> None:
    """Compile the splitting (or load it from numba's cache) for the argument types a pool's calls have."""
    none = np.empty(0, np.int64)
    deal_by_slot(none, 2, none, np.zeros(3, np.int64))
    split_by_stream(none, none, 2, np.zeros(3, np.int64))
