"""Inputs kept for labels that arrive late: ``predict`` with a ``request_id`` now, ``labels`` later.

Entries expire after a time limit and the table is bounded in entries and in bytes (oldest dropped first),
so clients that never send their labels, or send long request ids, cannot grow memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

__all__ = ["ENTRY_OVERHEAD", "PendingLabels"]

ENTRY_OVERHEAD = 256
"""Bytes counted per entry beyond its ids and inputs (the dict slot, the key tuple, the array header)."""


def _cost(key: tuple[str, str], x: np.ndarray) -> int:
    return len(key[0]) + len(key[1]) + x.nbytes + ENTRY_OVERHEAD


class PendingLabels:
    def __init__(self, ttl_seconds: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[float, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, stream: str, request_id: str, x: np.ndarray) -> None:
        self._expire()
        key = (stream, request_id)
        self._remove(key)
        self._entries[key] = (time.monotonic() + self.ttl, x)
        self.nbytes += _cost(key, x)
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def peek(self, stream: str, request_id: str) -> np.ndarray | None:
        """The kept inputs, still kept (removed only once the label has been applied)."""
        self._expire()
        entry = self._entries.get((stream, request_id))
        return entry[1] if entry is not None else None

    def discard(self, stream: str, request_id: str) -> None:
        self._remove((stream, request_id))

    def drop_stream(self, stream: str) -> None:
        for key in [k for k in self._entries if k[0] == stream]:
            self._remove(key)

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= _cost(key, entry[1])

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            self._remove(key)
