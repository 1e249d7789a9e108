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
That holds for streams a write creates from templates too: the front reserves them (`reserve`) first.
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

_RESERVE = """
local held, pending, need_of = KEYS[1], KEYS[2], KEYS[3]
local max_streams, max_bytes, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, s in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now)) do redis.call('HDEL', need_of, s) end
redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
local new, extra = {}, 0
for i = 4, #ARGV, 2 do
  local s = ARGV[i]
  if redis.call('HEXISTS', held, s) == 0 then
    if redis.call('HEXISTS', need_of, s) == 1 then
      redis.call('ZADD', pending, now + ttl, s)
    else
      new[#new + 1] = i; extra = extra + tonumber(ARGV[i + 1])
    end
  end
end
if #new == 0 then return {0, 0, ''} end
local count, used = redis.call('HLEN', held), 0
local h = redis.call('HVALS', held)
for i = 1, #h do used = used + tonumber(h[i]) end
local p = redis.call('HGETALL', need_of)
for i = 1, #p, 2 do
  if redis.call('HEXISTS', held, p[i]) == 0 then count = count + 1; used = used + tonumber(p[i + 1]) end
end
if max_streams >= 0 and count + #new > max_streams then return {1, count, ARGV[new[1]]} end
if max_bytes >= 0 and used + extra > max_bytes then return {2, used, ARGV[new[1]]} end
for _, i in ipairs(new) do
  redis.call('ZADD', pending, now + ttl, ARGV[i])
  redis.call('HSET', need_of, ARGV[i], ARGV[i + 1])
end
return {0, 0, ''}
"""
"""`_CHECK` for streams a write may create from templates, all or none: a stream held (it exists) or
pending costs nothing (a pending one's minute starts again); the others are counted together and become
pending if they all fit. It runs for every such write: when every stream exists, it counts nothing."""

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
        self._reserve = self._redis.register_script(_RESERVE)

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

    async def reserve(self, streams: dict[str, StreamSpec]) -> None:
        """At the front, before a write that may create ``streams`` from their templates is logged: 507 if
        the new ones do not all fit in their tenant's quota (nothing reserved then), else they count as
        pending until their owner creates them. Streams that exist cost nothing."""
        by_tenant: dict[str, list[str | int]] = {}
        for stream_id, spec in streams.items():
            namespace = namespace_of(stream_id)
            if namespace:
                by_tenant.setdefault(namespace[1:-1], []).extend((stream_id, slot_bytes(spec)))
        for tenant, pairs in by_tenant.items():
            args: list[str | int] = [
                -1 if self._max_streams is None else self._max_streams,
                -1 if self._max_bytes is None else self._max_bytes,
                int(PENDING_SECONDS * 1000),
                *pairs,
            ]
            try:
                verdict, figure, first = await self._reserve(keys=self._tenant_keys(tenant), args=args)
            except _REDIS_ERRORS as exc:
                raise Unavailable(f"tenant quotas cannot be checked: {exc}", stream=str(pairs[0])) from None
            stream = first.decode() if isinstance(first, bytes) else str(first)
            if verdict == 1:
                raise OverQuota(
                    f"tenant {tenant!r} holds {figure} streams, its quota (TRACKIN_TENANT_MAX_STREAMS):"
                    f" stream {stream!r} cannot be created from its template",
                    stream=stream,
                )
            if verdict == 2:
                raise OverQuota(
                    f"tenant {tenant!r} holds {int(figure):,} bytes of state; the streams this write creates"
                    f" from templates need more, over its quota of {self._max_bytes:,}"
                    " (TRACKIN_TENANT_MAX_BYTES)",
                    stream=stream,
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
