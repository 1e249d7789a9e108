"""Tenant quotas in cluster mode: one count per tenant in the cluster's Redis, shared by every replica.

A tenant's streams live on many owners, so no owner can count them alone. The count is kept in Redis:
``held`` (each stream an owner created or restored, with its state bytes, as the memory budget counts
them: ``models.pool.slot_bytes``) and ``pending`` (streams that passed the check at a front and are not
created yet; they count for a minute, as in single-node mode, so concurrent creations through different
replicas cannot all pass against the same count). A stream already held is not made pending again: its
replacement is counted with its new size once it is made. The check and the pending entry are one Lua
script: one atomic step for the whole cluster.

The check runs at the front, before the creation is logged, so the log holds only creations that passed
and every replay applies them alike (an owner checking at apply time could answer differently on replay).
The answers are single-node's: 507 ``tenant_quota`` naming the setting. The ``default`` tenant has no quota.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any

import pydantic
import redis.asyncio
import redis.exceptions

from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.domain.quotas import PENDING_SECONDS
from trackin.service.errors import OverQuota, Unavailable
from trackin.service.ids import namespace_of
from trackin.service.store.keys import RedisKeys

__all__ = ["SharedQuotas"]

log = logging.getLogger("trackin.cluster")

_CHECK = """
local held, pending, need_of = KEYS[1], KEYS[2], KEYS[3]
local stream, need = ARGV[1], tonumber(ARGV[2])
local max_streams, max_bytes, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, s in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now)) do redis.call('HDEL', need_of, s) end
redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
local exists = redis.call('HEXISTS', held, stream) == 1
local count, used = 0, 0
local h = redis.call('HGETALL', held)
for i = 1, #h, 2 do
  if h[i] ~= stream then count = count + 1; used = used + tonumber(h[i + 1]) end
end
local p = redis.call('HGETALL', need_of)
for i = 1, #p, 2 do
  if p[i] ~= stream and redis.call('HEXISTS', held, p[i]) == 0 then
    count = count + 1; used = used + tonumber(p[i + 1])
  end
end
if max_streams >= 0 and not exists and count >= max_streams then return {1, count} end
if max_bytes >= 0 and used + need > max_bytes then return {2, used} end
if not exists then
  redis.call('ZADD', pending, now + ttl, stream)
  redis.call('HSET', need_of, stream, need)
end
return {0, 0}
"""

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class SharedQuotas:
    """``TRACKIN_TENANT_MAX_STREAMS`` / ``_MAX_BYTES`` counted in Redis for the whole cluster."""

    def __init__(
        self, redis_url: str, max_streams: int | None, max_bytes: int | None, *, timeout: float = 2.0
    ) -> None:
        self._redis = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._keys = RedisKeys()
        self._max_streams = max_streams
        self._max_bytes = max_bytes
        self._check = self._redis.register_script(_CHECK)

    def _tenant_keys(self, tenant: str) -> list[str]:
        return [self._keys.quota(tenant, part) for part in ("held", "pending", "need")]

    async def check(self, stream_id: str, raw_spec: bytes) -> None:
        """At the front, before a creation or replacement is logged: 507 if the tenant has no room (the
        stream then counts as pending); a spec that does not parse is left to the owner's 422."""
        namespace = namespace_of(stream_id)
        if not namespace:
            return
        try:
            spec = StreamSpec.model_validate_json(raw_spec)
        except pydantic.ValidationError:
            return
        tenant, need = namespace[1:-1], slot_bytes(spec)
        args: list[str | int] = [
            stream_id,
            need,
            -1 if self._max_streams is None else self._max_streams,
            -1 if self._max_bytes is None else self._max_bytes,
            int(PENDING_SECONDS * 1000),
        ]
        try:
            verdict, figure = await self._check(keys=self._tenant_keys(tenant), args=args)
        except _REDIS_ERRORS as exc:
            raise Unavailable(f"tenant quotas cannot be checked: {exc}", stream=stream_id) from None
        if verdict == 1:
            raise OverQuota(
                f"tenant {tenant!r} holds {figure} streams, its quota (TRACKIN_TENANT_MAX_STREAMS)",
                stream=stream_id,
            )
        if verdict == 2:
            raise OverQuota(
                f"tenant {tenant!r} holds {int(figure):,} bytes of state; this stream needs {need:,} more,"
                f" over its quota of {self._max_bytes:,} (TRACKIN_TENANT_MAX_BYTES)",
                stream=stream_id,
            )

    async def hold(self, streams: Iterable[tuple[str, StreamSpec]]) -> None:
        """On an owner: these streams exist (created, or restored when the partition was taken), so they
        count as held, not pending. Idempotent: a replay holds them again."""
        by_tenant: dict[str, dict[Any, Any]] = {}  # redis-py types its mapping keys invariantly
        for stream_id, spec in streams:
            namespace = namespace_of(stream_id)
            if namespace:
                by_tenant.setdefault(namespace[1:-1], {})[stream_id] = slot_bytes(spec)
        if not by_tenant:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, sizes in by_tenant.items():
                held, pending, need = self._tenant_keys(tenant)
                pipe.hset(held, mapping=sizes)
                pipe.zrem(pending, *sizes)
                pipe.hdel(need, *sizes)
            await self._quietly(pipe.execute(), "hold")

    async def release(self, stream_id: str) -> None:
        """On an owner: the stream was deleted."""
        namespace = namespace_of(stream_id)
        if not namespace:
            return
        held, pending, need = self._tenant_keys(namespace[1:-1])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(held, stream_id)
            pipe.zrem(pending, stream_id)
            pipe.hdel(need, stream_id)
            await self._quietly(pipe.execute(), "release")

    async def _quietly(self, call: Awaitable[Any], what: str) -> None:
        """An owner's update must not fail the creation or deletion it follows (the store has it); the
        count is corrected the next time the partition is restored."""
        try:
            await call
        except _REDIS_ERRORS as exc:
            log.warning("tenant quota %s not recorded: %s", what, exc)

    async def close(self) -> None:
        await self._redis.aclose()
