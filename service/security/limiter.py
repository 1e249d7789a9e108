"""Rates, with the ``limits`` library: requests per API key, observations per tenant.

Counters live in Redis when the service has one (``redis_url``), so every replica draws on the same
budget; in the process otherwise (``limits``' synchronous memory storage, which skips the asyncio locks of
its async one: about 20 us a hit on a loaded machine, against 30). A sliding-window counter approximates a
token bucket in O(1) per hit (one Redis round trip): a client may burst up to the rate, then gets 429 with
``Retry-After`` until the window has room. Both limits are off unless configured, and cost nothing then.
When Redis cannot be reached, requests are admitted (and a warning logged): a rate limit must not take the
service down with it.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as SharedWindows
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter as LocalWindows

from trackin.service.errors import RateLimited

__all__ = ["Limiter"]

log = logging.getLogger("trackin.limits")
_WARN_EVERY = 10.0


class Limiter:
    def __init__(
        self,
        per_key: str | None,
        per_tenant: str | None,
        redis_url: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        """``per_key``: requests of one key (``limits`` notation, e.g. ``"200/second"``); ``per_tenant``:
        observations of one tenant (e.g. ``"10000/second"``); None: no limit. ``timeout``: of Redis calls."""
        self._local: LocalWindows | None = None
        self._shared: SharedWindows | None = None
        if redis_url:
            unix = redis_url.startswith("unix://")
            url = "async+redis+" + redis_url if unix else "async+" + redis_url
            storage = RedisStorage(
                url, implementation="redispy", key_prefix="trackin:limits", wrap_exceptions=True,
                socket_timeout=timeout, socket_connect_timeout=timeout,
            )  # fmt: skip
            self._shared = SharedWindows(storage)
        else:
            self._local = LocalWindows(MemoryStorage())
        self._warned = 0.0
        self._per_key: RateLimitItem | None = parse(per_key) if per_key else None
        self._per_tenant: RateLimitItem | None = parse(per_tenant) if per_tenant else None

    @property
    def active(self) -> bool:
        return self._per_key is not None or self._per_tenant is not None

    async def admit_key(self, key_id: str) -> None:
        """One request of ``key_id``; `RateLimited` if its rate is used up."""
        if self._per_key is not None:
            await self._hit(self._per_key, f"key:{key_id}", 1, "this API key's request rate")

    async def admit_observations(self, tenant: str, count: int) -> None:
        """``count`` observations of ``tenant``; `RateLimited` (nothing applied) if they do not fit."""
        if self._per_tenant is not None and count:
            what = f"tenant {tenant!r}'s observation rate"
            await self._hit(self._per_tenant, f"tenant:{tenant}", count, what)

    async def _hit(self, item: RateLimitItem, who: str, cost: int, what: str) -> None:
        try:
            if self._local is not None:
                if self._local.hit(item, who, cost=cost):
                    return
                stats = self._local.get_window_stats(item, who)
            else:
                assert self._shared is not None
                if await self._shared.hit(item, who, cost=cost):
                    return
                stats = await self._shared.get_window_stats(item, who)
        except StorageError as exc:
            now = time.monotonic()
            if now - self._warned > _WARN_EVERY:
                self._warned = now
                log.warning("rate limits not applied, their store is unavailable: %s", exc)
            return
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(f"{what} ({item}) is used up; retry in {wait} s", retry_after=wait)
