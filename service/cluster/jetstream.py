"""The NATS connection and the JetStream resources the cluster needs, created if missing.

Everything is created idempotently by whichever replica starts first: the log stream (file storage,
deduplication by message id), the dead-letter stream (writes an owner could not apply, kept two weeks),
the lease and replica buckets (their TTL is the lease TTL), a config bucket without TTL that pins the
partition count for the life of the cluster, the templates bucket and the pending labels bucket (TTL: how
long a prediction waits for its label).
"""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from trackin.service.cluster.partitions import Names

__all__ = ["NATS_ERRORS", "Link", "connect"]

log = logging.getLogger("trackin.cluster")

NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, asyncio.TimeoutError, OSError)
"""What a call to NATS raises when NATS is down, slow or refuses: the callers' 503 or retry."""

_CONFIG_BUCKET = "config"
DEAD_LETTER_MAX_AGE = 14 * 24 * 3600.0
"""Dead letters are kept two weeks: long enough to look at, bounded."""


class Link:
    """One replica's NATS connection, JetStream context and buckets."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        leases: KeyValue,
        replicas: KeyValue,
        templates: KeyValue,
        labels: KeyValue,
    ) -> None:
        self.nc = nc
        self.js = js
        self.leases = leases
        self.replicas = replicas
        self.templates = templates
        """Templates by name (no TTL): service/cluster/templates.py."""
        self.labels = labels
        """Inputs of predictions waiting for their labels (TTL): service/cluster/labels.py."""

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


async def connect(
    url: str,
    names: Names,
    *,
    ttl: float,
    partitions: int,
    label_ttl: float = 300.0,
    label_bytes: int = 64 * 2**20,
    timeout: float = 2.0,
) -> Link:
    """Connect (reconnecting forever afterwards) and make sure the stream and the buckets exist.

    Raises ``ValueError`` if the cluster was created with another partition count.
    """
    nc = await nats.connect(
        url,
        connect_timeout=timeout,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        name="trackin",
    )
    try:
        js = nc.jetstream(timeout=timeout)
        await _ensure_stream(js, names.log_stream, names.log_subjects, None)
        await _ensure_stream(js, names.dead_stream, names.dead_subjects, DEAD_LETTER_MAX_AGE)
        leases = await _ensure_bucket(js, names.lease_bucket, ttl)
        replicas = await _ensure_bucket(js, names.replica_bucket, ttl)
        config = await _ensure_bucket(js, f"{names.prefix}-{_CONFIG_BUCKET}", None)
        await _pin_partitions(config, partitions)
        templates = await _ensure_bucket(js, names.templates_bucket, None)
        labels = await _ensure_bucket(js, names.labels_bucket, label_ttl, label_bytes)
    except BaseException:
        await nc.close()
        raise
    return Link(nc, js, leases, replicas, templates, labels)


async def _ensure_stream(js: JetStreamContext, name: str, subjects: str, max_age: float | None) -> None:
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(
            name=name,
            subjects=[subjects],
            storage=StorageType.FILE,
            duplicate_window=120.0,
            max_age=max_age,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(name)  # another replica created it meanwhile


async def _ensure_bucket(
    js: JetStreamContext, bucket: str, ttl: float | None, max_bytes: int | None = None
) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    config = KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, ttl=ttl, max_bytes=max_bytes)
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)


async def _pin_partitions(config: KeyValue, partitions: int) -> None:
    try:
        await config.create("partitions", str(partitions).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        stored = int((await config.get("partitions")).value or b"0")
        if stored != partitions:
            raise ValueError(
                f"Invalid cluster_partitions: {partitions} (the cluster was created with {stored})"
            ) from None
