"""Giving freed memory back to the operating system.

Pool buffers are large allocations; when a pool is dropped, glibc may keep the freed pages in its heap (its
mmap threshold grows with the sizes it has seen), so the process's RSS would not come down. ``malloc_trim``
returns them. Elsewhere (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["release_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_memory() -> None:
    """Return the heap's free pages to the OS (glibc), after big buffers were freed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
