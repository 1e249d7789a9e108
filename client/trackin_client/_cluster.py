"""Owner-aware routing for a trackin cluster: the partition map, and which replica owns a stream.

Any replica answers for any stream (it forwards through NATS); sending a stream's requests to its owner
saves that hop. The map can be a moment stale after a partition moved: a request sent to the old owner
still works, it just pays the hop, so refresh the map now and then rather than on every request.

Example::

    from trackin_client import PartitionMap, TrackinClient

    cluster = PartitionMap.fetch("http://trackin:8000")
    with TrackinClient(cluster.owner_url("ES") or "http://trackin:8000") as client:
        client.observe("ES", {"value": [4321.25]})
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["PartitionMap"]

_HASH = "crc32-mod"


@dataclass(frozen=True, slots=True)
class PartitionMap:
    """``GET /v1/cluster/partitions`` of a cluster replica."""

    partitions: int
    owners: list[str | None]
    """Replica name per partition (None: moving, no owner right now)."""
    replicas: dict[str, str]
    """Replica name -> its URL."""
    namespace: str = ""
    """What the server prefixes the caller's ids with before hashing (``~tenant/`` for a key of a tenant
    other than ``default``): fetch the map with the key used for the streams."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> PartitionMap:
        if body.get("hash") != _HASH:
            raise ValueError(f"unknown partition hash {body.get('hash')!r} (this client knows {_HASH!r})")
        owners, replicas = list(body["owners"]), dict(body["replicas"])
        return cls(int(body["partitions"]), owners, replicas, str(body.get("namespace", "")))

    @classmethod
    def fetch(cls, url: str, *, api_key: str | None = None, timeout: float = 5.0) -> PartitionMap:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        url = f"{url.rstrip('/')}/v1/cluster/partitions"
        response = httpx.get(url, headers=headers, timeout=timeout)
        response.raise_for_status()
        return cls.from_json(response.json())

    def partition(self, stream_id: str) -> int:
        """The server's hash: CRC-32 of the UTF-8 id in the caller's namespace, modulo the partition count."""
        return zlib.crc32((self.namespace + stream_id).encode()) % self.partitions

    def owner_url(self, stream_id: str) -> str | None:
        """The URL of the replica that owns the stream now, or None while its partition moves."""
        owner = self.owners[self.partition(stream_id)]
        return self.replicas.get(owner) if owner is not None else None
