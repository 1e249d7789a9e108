"""The idle sweep of template-made streams in cluster mode, decided by the owner and applied from the log.

Single-node deletes a template-made stream once it is idle for its template's ``idle_seconds`` (wall
clock). A partition's state must be what its log makes it, so that a new owner replaying the log reaches
the same streams: the owner's wall-clock decision is therefore only a proposal, logged to the partition
as a ``sweep`` message naming each idle stream with the log position the decision saw (the sequence of
the last message applied to it). Applying that message, the first time or on a replay, deletes a stream
only if its position is still that one: nothing was applied to it in between, so an observation that
raced the sweep keeps the stream, and a replay deletes exactly what the first apply deleted (a stream's
position after a given message is the same on every replay).

Finding idle streams reads every template-made record: `IdleScan` does it once per interval for all the
partitions of a replica (not once per partition), and each partition worker checks its few candidates
again when it decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import orjson

from trackin.service.cluster.partitions import partition_of
from trackin.service.domain.catalog import Catalog, Template

__all__ = ["SWEEP_OP", "IdleScan", "idle_streams", "sweep_body", "swept", "to_delete"]

SWEEP_OP = "sweep"
"""The operation header (``Trackin-Op``) of a sweep message; its body is `sweep_body`."""


def idle_streams(
    streams: Iterable[str],
    catalog: Catalog,
    template_of: Callable[[str], Template | None],
    position: Callable[[str], int],
    now: float,
) -> dict[str, int]:
    """Among ``streams``, the template-made ones idle for longer than their template allows, with the log
    position each has now (a stream whose template is gone is kept, as single-node keeps it)."""
    idle = {}
    for stream in streams:
        record = catalog.record(stream)
        if record is None or record.template is None:
            continue
        template = template_of(record.template)
        if template is not None and now - record.updated_at > template.idle_seconds:
            idle[stream] = position(stream)
    return idle


class IdleScan:
    """The replica's idle template-made streams by partition, scanned at most once per ``every`` seconds."""

    def __init__(
        self,
        catalog: Catalog,
        template_of: Callable[[str], Template | None],
        partitions: int,
        every: float,
    ) -> None:
        self._catalog = catalog
        self._template_of = template_of
        self._partitions = partitions
        self._every = every
        self._at: float | None = None
        self._by_partition: dict[int, list[str]] = {}

    def idle(self, partition: int, position: Callable[[str], int]) -> dict[str, int]:
        """The partition's idle template-made streams now, with their positions now."""
        now = time.monotonic()
        if self._at is None or now - self._at >= self._every:
            self._at = now
            self._by_partition = {}
            found = idle_streams(
                (s for s, _ in self._catalog.templated()),
                self._catalog,
                self._template_of,
                lambda s: 0,
                time.time(),
            )
            for stream in found:
                self._by_partition.setdefault(partition_of(stream, self._partitions), []).append(stream)
        candidates = self._by_partition.get(partition, [])
        return idle_streams(candidates, self._catalog, self._template_of, position, time.time())


def sweep_body(idle: Mapping[str, int]) -> bytes:
    return orjson.dumps({"streams": dict(idle)})


def swept(raw: bytes) -> dict[str, int]:
    """The streams and positions a sweep message names (a body that is not one names none)."""
    try:
        streams = orjson.loads(raw).get("streams")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    if not isinstance(streams, dict):
        return {}
    return {s: p for s, p in streams.items() if isinstance(s, str) and isinstance(p, int)}


def to_delete(named: Mapping[str, int], catalog: Catalog, position: Callable[[str], int]) -> list[str]:
    """The named streams still resident, template-made, and at the position the decision saw."""
    return [
        stream
        for stream, seen in named.items()
        if (record := catalog.record(stream)) is not None
        and record.template is not None
        and position(stream) == seen
    ]
