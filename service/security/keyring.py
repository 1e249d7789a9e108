"""The API keys in force, read from the store every ``key_refresh_seconds`` and verified once per token.

`lookup` runs on every request and costs a dictionary lookup once a token has been verified: verified
tokens are cached until the next refresh. A refresh replaces the table and empties the cache, so a key
revoked in the store (``trackin keys revoke``, by any process) stops working on every replica within one
refresh interval (1 s by default), and a key created elsewhere starts working within one as well.

Whether keys are enforced: when any key is known, while the store has not been read yet (a store that is
down at start must not open the service), and always when ``required`` (a service on an address other
than loopback: revoking its last key must lock it, not open it).
"""

from __future__ import annotations

import asyncio
import logging

from trackin.service.security.keys import KEY_KIND, ApiKey, bootstrap_key, split_key
from trackin.service.security.namespace import Namespace, Principal
from trackin.service.store import Store, StoreError
from trackin.service.tasks import stop_task

__all__ = ["Keyring"]

log = logging.getLogger("trackin.keys")
_MAX_CACHED = 10_000


class Keyring:
    def __init__(
        self,
        store: Store | None,
        refresh_seconds: float,
        bootstrap: str | None = None,
        *,
        required: bool = False,
    ) -> None:
        self._store = store
        self._required = required
        self._every = refresh_seconds
        self._bootstrap = bootstrap_key(bootstrap) if bootstrap else None
        self._keys: dict[str, ApiKey] = {}
        if store is None and self._bootstrap is not None:
            self._keys[self._bootstrap.key_id] = self._bootstrap
        self._cache: dict[str, Principal] = {}
        self._loaded = store is None
        self._started = False
        self._task: asyncio.Task[None] | None = None

    @property
    def enforcing(self) -> bool:
        return bool(self._keys) or not self._loaded or self._required

    @property
    def empty(self) -> bool:
        """Read, and no key in it."""
        return self._loaded and not self._keys

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def start(self) -> None:
        """Read the keys once (creating the bootstrap key if absent), then keep refreshing."""
        if self._store is not None:
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("could not read API keys (refusing requests until read): %s", exc)
            self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._store is not None and self._started:
            await self._store.shutdown()

    async def refresh(self) -> None:
        assert self._store is not None
        if not self._started:
            await self._store.startup()
            self._started = True
        records = await self._store.list_records(KEY_KIND)
        boot = self._bootstrap
        if boot is not None and records.get(boot.key_id, {}).get("sha256") != boot.digest:
            await self._store.put_record(KEY_KIND, boot.key_id, boot.record())
            records[boot.key_id] = boot.record()
        keys = {}
        for key_id, value in records.items():
            try:
                keys[key_id] = ApiKey.from_record(key_id, value)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed API key record %r", key_id)
        self._keys, self._cache, self._loaded = keys, {}, True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.refresh()
            except StoreError as exc:  # keep the last table: a store blip must not lock everyone out
                log.warning("could not refresh API keys: %s", exc)
            except Exception:
                log.exception("could not refresh API keys")

    def lookup(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None (unknown, revoked or wrong secret)."""
        known = self._cache.get(token)
        if known is not None:
            return known
        key_id, secret = split_key(token)
        key = self._keys.get(key_id)
        if key is None or not key.matches(secret):
            return None
        principal = Principal(key.tenant, key.scopes, key.key_id, Namespace.of(key.tenant))
        if len(self._cache) < _MAX_CACHED:
            self._cache[token] = principal
        return principal
