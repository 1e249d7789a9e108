"""Every Redis key name trackin uses, built in this one place.

Keeping names here means a prefix change, a migration or a ``redis-cli --scan`` by an operator needs
one file, and no module can invent a key that collides with another's. Stream ids are used verbatim:
the store only accepts ``[A-Za-z0-9._:-]{1,128}``, optionally after ``~tenant/``
(`service.store.base.check_stream_id`), so an id can
never end a key early or forge another key's name.

Layout under prefix ``P`` (default ``trackin``)::

    P:epoch             string   owner epoch counter (INCR)
    P:streams           zset     ids of live checkpoints, all score 0, for ZRANGEBYLEX paging
    P:logs              set      ids that may have a log, so log_length need not SCAN
    P:ckpt:<id>         hash     epoch, step, log_position, meta, tensors, deleted
    P:log:<id>          stream   the durability log of one stream (XADD / XRANGE / XTRIM)
    P:rec:<kind>        hash     name -> JSON control-plane record
    P:batches           stream   the batch log: one entry per engine batch (fields e: epoch, p: payload)
    P:quota:<tenant>:held      hash  stream id -> state bytes (cluster mode's shared tenant quotas)
    P:quota:<tenant>:pending   zset  stream id -> expiry (ms): passed the check, not created yet
    P:quota:<tenant>:need      hash  stream id -> state bytes of a pending stream

Not Redis Cluster ready: the fenced write updates the stream's hash and the global index in one
script, which cluster mode only allows within one hash slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trackin.service.store.base import check_record_kind, check_stream_id

__all__ = ["DEFAULT_PREFIX", "RedisKeys"]

DEFAULT_PREFIX = "trackin"

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names under one prefix; two stores with different prefixes share a Redis without overlap."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if _PREFIX_PATTERN.fullmatch(self.prefix) is None:
            raise ValueError(f"Invalid key prefix: {self.prefix!r}")

    @property
    def epoch(self) -> str:
        """Counter behind `Store.acquire_epoch`."""
        return f"{self.prefix}:epoch"

    @property
    def stream_index(self) -> str:
        """Sorted set of live stream ids (``list_streams``, ``count_streams``)."""
        return f"{self.prefix}:streams"

    @property
    def log_index(self) -> str:
        """Set of stream ids that may hold log entries (``log_length``)."""
        return f"{self.prefix}:logs"

    @property
    def batches(self) -> str:
        """Redis Stream holding the batch log (group commit), every owner's entries."""
        return f"{self.prefix}:batches"

    def checkpoint(self, stream_id: str) -> str:
        """Hash holding one stream's checkpoint or tombstone."""
        return f"{self.prefix}:ckpt:{check_stream_id(stream_id)}"

    def log(self, stream_id: str) -> str:
        """Redis Stream holding one stream's durability log."""
        return f"{self.prefix}:log:{check_stream_id(stream_id)}"

    def records(self, kind: str) -> str:
        """Hash of all records of one kind."""
        return f"{self.prefix}:rec:{check_record_kind(kind)}"

    def quota(self, tenant: str, part: str) -> str:
        """Cluster mode's count of one tenant's streams: ``held``, ``pending`` or ``need``."""
        if part not in ("held", "pending", "need") or _PREFIX_PATTERN.fullmatch(tenant) is None:
            raise ValueError(f"Invalid quota key: {tenant!r} {part!r}")
        return f"{self.prefix}:quota:{tenant}:{part}"
