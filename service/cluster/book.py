"""The leases this replica holds, and whether it may still act on a partition (read by everything).

A lease is valid until ``VALID_FRACTION`` of the TTL after the last successful renewal was *sent*. The
server's TTL runs from when it *stored* that renewal, which is later, so a replica stops applying and
answering for a partition before anyone else can take it, however long the replica was paused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["VALID_FRACTION", "Held", "LeaseBook"]

VALID_FRACTION = 0.6
"""Of the TTL; renewals go out every quarter of it, so two may fail before a partition lapses."""


@dataclass(slots=True)
class Held:
    """One lease: ``token`` is the revision it was taken at (the fencing token), ``revision`` the last
    one written (the compare-and-set's expectation), ``until`` a ``time.monotonic()`` deadline."""

    token: int
    revision: int
    until: float


class LeaseBook:
    """Partition -> lease; written by `trackin.service.cluster.leases.Leases`, read by the owner, the
    fenced store and the front."""

    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"Invalid lease TTL: {ttl}")
        self.ttl = ttl
        self._held: dict[int, Held] = {}

    def took(self, partition: int, revision: int, sent: float) -> None:
        self._held[partition] = Held(revision, revision, sent + VALID_FRACTION * self.ttl)

    def renewed(self, partition: int, revision: int, sent: float) -> None:
        held = self._held.get(partition)
        if held is not None:
            held.revision, held.until = revision, sent + VALID_FRACTION * self.ttl

    def gave_up(self, partition: int) -> None:
        self._held.pop(partition, None)

    def valid(self, partition: int) -> bool:
        """Whether this replica may apply, answer and checkpoint for the partition right now."""
        held = self._held.get(partition)
        return held is not None and time.monotonic() < held.until

    def token(self, partition: int) -> int | None:
        """The fencing token of a valid lease, else None."""
        held = self._held.get(partition)
        return held.token if held is not None and time.monotonic() < held.until else None

    def get(self, partition: int) -> Held | None:
        return self._held.get(partition)

    def held(self) -> list[int]:
        """Partitions held (valid or lapsed but not given up yet), in order."""
        return sorted(self._held)

    def lapsed(self) -> list[int]:
        now = time.monotonic()
        return [p for p, h in sorted(self._held.items()) if now >= h.until]
