"""The checkpoint store as a partition owner sees it: writes fenced by the partition's lease.

A wrapper, not a subclass, around the configured `Store` (Redis): every checkpoint and delete is written
with the fencing token of its partition's lease as its epoch, so the store's compare-and-write refuses a
replica that lost the partition once its successor wrote. A checkpoint of a partition this replica does
not validly hold is not sent at all (reported as refused). The durability log of single-node mode is not
used: the JetStream log replaces it.

It also remembers the log position each stream's stored checkpoint covers (`covered`), as written or
read here: what the owner may trim the log up to (service/cluster/trim.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from trackin.service.cluster.book import LeaseBook
from trackin.service.cluster.partitions import partition_of
from trackin.service.store import Checkpoint, LogEntry, Store, StoreUnavailable, WriteOutcome

__all__ = ["LeaseFencedStore"]


class LeaseFencedStore(Store):
    """`Store` whose epochs are lease revisions (`LeaseBook`) of each stream's partition."""

    def __init__(self, inner: Store, book: LeaseBook, partitions: int) -> None:
        self._inner = inner
        self._book = book
        self._partitions = partitions
        self.covered: dict[str, int] = {}
        """Stream id -> the log sequence its stored checkpoint covers (streams this replica wrote or read)."""

    def forget(self, stream_ids: Sequence[str]) -> None:
        """Streams no longer resident here: what their checkpoints cover is the next owner's business."""
        for stream_id in stream_ids:
            self.covered.pop(stream_id, None)

    def _cover(self, checkpoint: Checkpoint) -> None:
        self.covered[checkpoint.stream_id] = int(checkpoint.log_position or 0)

    def _token(self, stream_id: str) -> int | None:
        return self._book.token(partition_of(stream_id, self._partitions))

    async def startup(self) -> None:
        await self._inner.startup()

    async def shutdown(self) -> None:
        await self._inner.shutdown()

    async def ping(self) -> None:
        await self._inner.ping()

    async def acquire_epoch(self) -> int:
        return 0  # unused: each partition's lease revision is the epoch of its streams' writes

    async def write_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> WriteOutcome:
        fenced, refused = [], []
        for checkpoint in checkpoints:
            token = self._token(checkpoint.stream_id)
            if token is None:
                refused.append(checkpoint.stream_id)
            else:
                fenced.append(dataclasses.replace(checkpoint, epoch=token))
        outcome = await self._inner.write_checkpoints(fenced)
        by_id = {c.stream_id: c for c in fenced}
        for stream_id in outcome.accepted:
            self._cover(by_id[stream_id])
        return WriteOutcome(outcome.accepted, outcome.rejected + refused)

    async def read_checkpoint(self, stream_id: str) -> Checkpoint | None:
        checkpoint = await self._inner.read_checkpoint(stream_id)
        if checkpoint is not None:
            self._cover(checkpoint)
        return checkpoint

    async def read_checkpoints(self, stream_ids: Sequence[str]) -> dict[str, Checkpoint]:
        found = await self._inner.read_checkpoints(stream_ids)
        for checkpoint in found.values():
            self._cover(checkpoint)
        return found

    async def delete_stream(self, stream_id: str, epoch: int) -> bool:
        token = self._token(stream_id)
        if token is None:
            raise StoreUnavailable(f"partition of {stream_id!r} is not held by this replica")
        deleted = await self._inner.delete_stream(stream_id, token)
        self.covered.pop(stream_id, None)
        return deleted

    async def list_streams(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        return await self._inner.list_streams(prefix, limit, cursor)

    async def count_streams(self) -> int:
        return await self._inner.count_streams()

    async def append_log(self, entries: Sequence[LogEntry]) -> list[str]:
        raise StoreUnavailable("cluster mode logs to JetStream, not to the store")

    async def read_log(self, stream_id: str, after: str) -> list[tuple[str, bytes]]:
        return []

    async def trim_log(self, stream_id: str, upto: str) -> None:
        return None

    async def trim_logs(self, upto: Mapping[str, str]) -> None:
        return None

    async def log_length(self) -> int:
        return 0

    async def append_batches(self, epoch: int, payloads: Sequence[bytes]) -> list[str]:
        raise StoreUnavailable("cluster mode logs to JetStream, not to the store")

    async def read_batches(self, after: str) -> list[tuple[str, int, bytes]]:
        return []

    async def trim_batches(self, epoch: int, upto: str) -> None:
        return None

    async def delete_batches(self, positions: Sequence[str]) -> None:
        return None

    async def legacy_log_streams(self) -> list[str]:
        return []

    async def put_record(self, kind: str, name: str, value: dict[str, Any]) -> None:
        await self._inner.put_record(kind, name, value)

    async def delete_record(self, kind: str, name: str) -> None:
        await self._inner.delete_record(kind, name)

    async def list_records(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self._inner.list_records(kind)
