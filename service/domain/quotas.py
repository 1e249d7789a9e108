"""Per-tenant quotas: how many streams, and how many bytes of state, one tenant's namespace may hold.

Tenants other than ``default`` keep their streams under ``~tenant/`` (service/security/namespace.py), so a
tenant's streams are the ids with that prefix. Streams are counted resident and stored; bytes, as the memory
budget counts them (``models.pool.slot_bytes``), over resident streams: a stored stream not restored since
a restart counts once it is used again. The ``default`` tenant (the operator's) has no quota: the memory
budget bounds it.

A stream that passed the check counts as pending until it is resident (or for a minute, if its creation
failed), so concurrent creations cannot all pass against the same count.
"""

from __future__ import annotations

import time

from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.persistence import Persistence
from trackin.service.errors import OverQuota
from trackin.service.ids import namespace_of

__all__ = ["TenantQuotas"]

PENDING_SECONDS = 60.0


class TenantQuotas:
    def __init__(
        self, catalog: Catalog, persistence: Persistence, max_streams: int | None, max_bytes: int | None
    ) -> None:
        self._catalog = catalog
        self._persistence = persistence
        self._max_streams = max_streams
        self._max_bytes = max_bytes
        self._pending: dict[str, tuple[float, int]] = {}
        """Stream id -> (when checked, its bytes): passed, not resident yet."""

    async def check(self, stream_id: str, spec: StreamSpec, replacing: StreamSpec | None = None) -> None:
        """Refuse (507) a stream its tenant has no room for; ``replacing``: the spec it takes over from."""
        namespace = namespace_of(stream_id)
        if not namespace:
            return
        stored: list[str] = []
        if self._max_streams is not None and replacing is None:
            stored, _ = await self._persistence.stored_ids(namespace, self._max_streams + 1, None)
        # No await from here to the end: the counts and the new pending entry are one step.
        tenant, need = namespace[1:-1], slot_bytes(spec)
        resident = self._catalog.ids(namespace)
        pending = self._pending_in(namespace)
        if self._max_streams is not None and replacing is None:
            held = len({*resident, *stored, *pending} - {stream_id})
            if held >= self._max_streams:
                raise OverQuota(
                    f"tenant {tenant!r} holds {held} streams, its quota (TRACKIN_TENANT_MAX_STREAMS)",
                    stream=stream_id,
                )
        if self._max_bytes is not None:
            records = (self._catalog.record(s) for s in resident if s != stream_id)
            used = sum(slot_bytes(r.spec) for r in records if r is not None)
            used += sum(b for s, b in pending.items() if s != stream_id and s not in self._catalog)
            if used + need > self._max_bytes:
                raise OverQuota(
                    f"tenant {tenant!r} holds {used:,} bytes of state; this stream needs {need:,} more, over"
                    f" its quota of {self._max_bytes:,} (TRACKIN_TENANT_MAX_BYTES)",
                    stream=stream_id,
                )
        self._pending[stream_id] = (time.monotonic(), need)

    def _pending_in(self, namespace: str) -> dict[str, int]:
        """The namespace's pending streams' bytes, after dropping those now resident or long gone."""
        now = time.monotonic()
        for stream_id, (since, _) in list(self._pending.items()):
            if stream_id in self._catalog or now - since > PENDING_SECONDS:
                del self._pending[stream_id]
        return {s: b for s, (_, b) in self._pending.items() if s.startswith(namespace)}
