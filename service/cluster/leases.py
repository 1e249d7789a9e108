"""Partition leases in a JetStream KV bucket: take, renew, release, and spread evenly over replicas.

Every change is a compare-and-set on the key's revision (``create``: only if absent; ``update`` and
``delete``: only if nobody wrote since), so two replicas can never both believe they took a partition
from the same state. Liveness comes from the bucket's TTL: a lease not renewed disappears, a replica not
heartbeating drops out of the count the others divide the partitions by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Protocol

import nats.js.errors
import orjson

from trackin.service.cluster.book import LeaseBook
from trackin.service.cluster.jetstream import NATS_ERRORS, Link
from trackin.service.cluster.partitions import Names, preference
from trackin.service.tasks import stop_task

__all__ = ["Leases", "Owners", "PartitionMap"]

log = logging.getLogger("trackin.cluster")


class Owners(Protocol):
    """What happens to a partition when this replica takes or gives up its lease."""

    async def take(self, partition: int, token: int) -> None:
        """Start restoring and serving (returns at once; the work runs in the background)."""
        ...

    async def drop(self, partition: int, *, lapsed: bool) -> None:
        """Stop applying and answering; unless ``lapsed``, checkpoint first (the lease is still valid)."""
        ...

    def failed(self) -> list[int]:
        """Partitions whose worker stopped on an error: released without a checkpoint."""
        ...


class PartitionMap:
    """The cluster as the last tick saw it: owner of each partition, replicas and their URLs."""

    def __init__(self, partitions: int) -> None:
        self.owners: list[str | None] = [None] * partitions
        self.replicas: dict[str, str] = {}

    def as_json(self, me: str, hash_name: str) -> dict[str, object]:
        return {
            "partitions": len(self.owners),
            "hash": hash_name,
            "replica": me,
            "owners": self.owners,
            "replicas": self.replicas,
        }


class Leases:
    """The lease loop of one replica: a tick every quarter of the TTL.

    Each tick: give up lapsed leases; heartbeat; renew the held ones; read the map; release partitions
    beyond ``ceil(P / live replicas)`` and take free ones up to it (rendezvous order).
    """

    def __init__(
        self,
        link: Link,
        book: LeaseBook,
        owners: Owners,
        names: Names,
        replica: str,
        url: str,
        partitions: int,
    ) -> None:
        self._link = link
        self._book = book
        self._owners = owners
        self._names = names
        self.replica = replica
        self._url = url
        self._partitions = partitions
        self.map = PartitionMap(partitions)
        self.changes = 0
        """Leases taken, lost or released by this replica (a metric)."""
        self.ticked = False
        """A tick read the map (readiness)."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trackin-leases")

    async def stop(self) -> None:
        """Release every partition (checkpointed first) so the others take them at once."""
        self._stopping = True
        await stop_task(self._task)
        for partition in self._book.held():
            await self._release(partition)
        with contextlib.suppress(*NATS_ERRORS):
            await self._link.replicas.delete(self.replica)

    async def _run(self) -> None:
        every = self._book.ttl / 4
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("lease tick failed")
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    async def tick(self) -> None:
        for partition in self._book.lapsed():
            log.warning("partition %d: lease lapsed (not renewed in time); stopped serving it", partition)
            await self._lose(partition)
        for partition in self._owners.failed():
            await self._release(partition, checkpoint=False)
        await self._renew()
        try:
            await self._link.replicas.put(self.replica, orjson.dumps({"url": self._url}))
        except NATS_ERRORS as exc:
            log.warning("NATS unavailable (%s): leases lapse unless renewed in time", exc)
            return
        try:
            await self._read_map()
        except NATS_ERRORS as exc:
            log.warning("cannot read the partition map (%s)", exc)
            return
        await self._balance()
        self.ticked = True

    async def _renew(self) -> None:
        """Renew every held lease at once (one round trip of time, not one per partition)."""
        held = [(p, h) for p in self._book.held() if (h := self._book.get(p)) is not None]
        sent = time.monotonic()
        me, leases = self.replica.encode(), self._link.leases
        outcomes = await asyncio.gather(
            *(leases.update(Names.lease_key(p), me, last=h.revision) for p, h in held), return_exceptions=True
        )
        for (partition, _), outcome in zip(held, outcomes, strict=True):
            if isinstance(outcome, nats.js.errors.KeyWrongLastSequenceError):
                log.warning("partition %d: lease taken by another replica; stopped serving it", partition)
                await self._lose(partition)
            elif isinstance(outcome, int):
                self._book.renewed(partition, outcome, sent)
            elif not isinstance(outcome, NATS_ERRORS):  # NATS slow or down: it lapses if this goes on
                log.error("partition %d: renewal failed: %r", partition, outcome)

    async def _read_map(self) -> None:
        js, bucket = self._link.js, self._names.replica_bucket
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
        live = sorted(s.rsplit(".", 1)[1] for s in (info.state.subjects or {}))
        urls: dict[str, str] = {}
        for replica in live:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._link.replicas.get(replica)
                urls[replica] = str(orjson.loads(entry.value or b"{}").get("url", ""))
        owners = await asyncio.gather(*(self._owner(p) for p in range(self._partitions)))
        self.map.owners, self.map.replicas = list(owners), urls

    async def _owner(self, partition: int) -> str | None:
        try:
            entry = await self._link.leases.get(Names.lease_key(partition))
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def _balance(self) -> None:
        live = set(self.map.replicas) | {self.replica}
        target = math.ceil(self._partitions / len(live))
        mine = self._book.held()
        if self._stopping:
            return
        if len(mine) > target:
            extras = sorted(mine, key=lambda p: preference(self.replica, p))[: len(mine) - target]
            for partition in extras:
                await self._release(partition)
            return
        free = [p for p, owner in enumerate(self.map.owners) if owner is None and p not in mine]
        free.sort(key=lambda p: -preference(self.replica, p))
        for partition in free[: target - len(mine)]:
            await self._take(partition)

    async def _take(self, partition: int) -> None:
        sent = time.monotonic()
        try:
            revision = await self._link.leases.create(Names.lease_key(partition), self.replica.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # someone else was faster
        except NATS_ERRORS:
            return
        self._book.took(partition, revision, sent)
        self.map.owners[partition] = self.replica
        self.changes += 1
        log.info("partition %d: lease taken (fencing token %d)", partition, revision)
        await self._owners.take(partition, revision)

    async def _lose(self, partition: int) -> None:
        self._book.gave_up(partition)
        self.changes += 1
        await self._owners.drop(partition, lapsed=True)

    async def _release(self, partition: int, *, checkpoint: bool = True) -> None:
        """Hand a partition over: stop and checkpoint it while the lease is valid, then delete the lease."""
        held = self._book.get(partition)
        fine = checkpoint and held is not None and self._book.valid(partition)
        await self._owners.drop(partition, lapsed=not fine)
        self._book.gave_up(partition)
        self.changes += 1
        if held is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._link.leases.delete(Names.lease_key(partition), last=held.revision)
        self.map.owners[partition] = None
        log.info("partition %d: released", partition)
