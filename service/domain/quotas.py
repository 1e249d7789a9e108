"""Per-tenant quotas: how many streams, and how many bytes of state, one tenant's namespace may hold.

Tenants other than ``default`` keep their streams under ``~tenant/`` (service/security/namespace.py), so a
tenant's streams are the ids with that prefix. Streams are counted resident and stored; bytes, as the memory
budget counts them (``models.pool.slot_bytes``), over resident streams: a stored stream not restored since
a restart counts once it is used again. The ``default`` tenant (the operator's) has no quota: the memory
budget bounds it.
"""

from __future__ import annotations

from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.persistence import Persistence
from trackin.service.errors import OverQuota
from trackin.service.ids import namespace_of

__all__ = ["TenantQuotas"]


class TenantQuotas:
    def __init__(
        self, catalog: Catalog, persistence: Persistence, max_streams: int | None, max_bytes: int | None
    ) -> None:
        self._catalog = catalog
        self._persistence = persistence
        self._max_streams = max_streams
        self._max_bytes = max_bytes

    async def check(self, stream_id: str, spec: StreamSpec, replacing: StreamSpec | None = None) -> None:
        """Refuse (507) a stream its tenant has no room for; ``replacing``: the spec it takes over from."""
        namespace = namespace_of(stream_id)
        if not namespace:
            return
        tenant = namespace[1:-1]
        resident = self._catalog.ids(namespace)
        if self._max_streams is not None and replacing is None:
            stored, _ = await self._persistence.stored_ids(namespace, self._max_streams + 1, None)
            held = len({*resident, *stored})
            if held >= self._max_streams:
                raise OverQuota(
                    f"tenant {tenant!r} holds {held} streams, its quota (TRACKIN_TENANT_MAX_STREAMS)",
                    stream=stream_id,
                )
        if self._max_bytes is not None:
            records = (self._catalog.record(s) for s in resident if s != stream_id)
            used = sum(slot_bytes(r.spec) for r in records if r is not None)
            need = slot_bytes(spec)
            if used + need > self._max_bytes:
                raise OverQuota(
                    f"tenant {tenant!r} holds {used:,} bytes of state; this stream needs {need:,} more, over"
                    f" its quota of {self._max_bytes:,} (TRACKIN_TENANT_MAX_BYTES)",
                    stream=stream_id,
                )
