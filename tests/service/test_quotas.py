"""Tenant quotas in process (a real catalog, the in-memory persistence): creations checked at the same
time cannot all pass against one count; the default tenant has no quota."""

from __future__ import annotations

import pytest

from tests.service import LINEAR
from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Catalog, StreamRecord
from trackin.service.domain.persistence import InMemory
from trackin.service.domain.quotas import TenantQuotas
from trackin.service.errors import OverQuota

SPEC = StreamSpec.model_validate(LINEAR)


async def test_streams_checked_but_not_created_yet_count() -> None:
    catalog = Catalog()
    quotas = TenantQuotas(catalog, InMemory(), max_streams=2, max_bytes=None)
    await quotas.check("~a/x", SPEC)
    await quotas.check("~a/y", SPEC)  # x is pending: 1 held
    with pytest.raises(OverQuota, match="holds 2 streams"):
        await quotas.check("~a/z", SPEC)
    await quotas.check("~a/x", SPEC)  # the same id again is not a second stream
    catalog.add("~a/x", StreamRecord(spec=SPEC, created_at=0.0, updated_at=0.0))  # x created: counted once
    with pytest.raises(OverQuota):
        await quotas.check("~a/z", SPEC)
    await quotas.check("~b/z", SPEC)  # another tenant: its own count
    for i in range(5):
        await quotas.check(f"s{i}", SPEC)  # the default tenant: no quota


async def test_bytes_of_pending_and_resident_streams_count() -> None:
    catalog = Catalog()
    quotas = TenantQuotas(catalog, InMemory(), max_streams=None, max_bytes=2 * slot_bytes(SPEC))
    await quotas.check("~a/x", SPEC)
    catalog.add("~a/x", StreamRecord(spec=SPEC, created_at=0.0, updated_at=0.0))
    await quotas.check("~a/y", SPEC)
    with pytest.raises(OverQuota, match="TRACKIN_TENANT_MAX_BYTES"):
        await quotas.check("~a/z", SPEC)
    await quotas.check("~a/x", SPEC, replacing=SPEC)  # a replacement frees what it replaces
