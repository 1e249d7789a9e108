"""Inputs kept for labels that arrive late: ``predict`` with a ``request_id`` now, ``labels`` later.

Entries expire after a time limit and the table is bounded (oldest dropped first), so clients that never
send their labels cannot grow memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

__all__ = ["PendingLabels"]


class PendingLabels:
    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, stream: str, request_id: str, x: np.ndarray) -> None:
        self._expire()
        key = (stream, request_id)
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + self.ttl, x)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def peek(self, stream: str, request_id: str) -> np.ndarray | None:
        """The kept inputs, still kept (removed only once the label has been applied)."""
        self._expire()
        entry = self._entries.get((stream, request_id))
        return entry[1] if entry is not None else None

    def discard(self, stream: str, request_id: str) -> None:
        self._entries.pop((stream, request_id), None)

    def drop_stream(self, stream: str) -> None:
        for key in [k for k in self._entries if k[0] == stream]:
            del self._entries[key]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[key]
