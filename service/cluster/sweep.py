"""The idle sweep of template-made streams in cluster mode, decided by the owner and applied from the log.

Single-node deletes a template-made stream once it is idle for its template's ``idle_seconds`` (wall
clock). A partition's state must be what its log makes it, so that a new owner replaying the log reaches
the same streams: the owner's wall-clock decision is therefore only a proposal, logged to the partition
as a ``sweep`` message naming each idle stream with the log position the decision saw (the sequence of
the last message applied to it). Applying that message, the first time or on a replay, deletes a stream
only if its position is still that one: nothing was applied to it in between, so an observation that
raced the sweep keeps the stream, and a replay deletes exactly what the first apply deleted (a stream's
position after a given message is the same on every replay).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import orjson

from trackin.service.domain.catalog import Catalog, Template

__all__ = ["SWEEP_OP", "idle_streams", "sweep_body", "swept", "to_delete"]

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
