"""Which partition a stream belongs to, and the names of everything the cluster keeps in NATS.

The hash is ``crc32(utf-8 id) mod P``: stable across processes, restarts and languages (every standard
library has CRC-32), so an owner-aware client computes the same partition as the replicas.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["HASH_NAME", "Names", "partition_of", "preference"]

HASH_NAME = "crc32-mod"
"""How the partition map describes the hash to clients."""


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition of a stream id, in ``[0, partitions)``."""
    return zlib.crc32(stream_id.encode()) % partitions


def preference(replica: str, partition: int) -> int:
    """Rendezvous weight: a replica takes free partitions with the highest weight first, so replicas
    prefer different partitions and a joining or leaving one moves only its share."""
    return zlib.crc32(f"{replica}:{partition}".encode())


@dataclass(frozen=True, slots=True)
class Names:
    """Subjects, the stream and the buckets; ``prefix`` lets two clusters share one NATS."""

    prefix: str = "trackin"

    @property
    def log_stream(self) -> str:
        """The JetStream stream holding every partition's writes."""
        return f"{self.prefix}-log"

    def log_subject(self, partition: int) -> str:
        return f"{self.prefix}.log.{partition}"

    @property
    def log_subjects(self) -> str:
        return f"{self.prefix}.log.*"

    def read_subject(self, partition: int) -> str:
        """Reads go to the owner by NATS request/reply, not through the log."""
        return f"{self.prefix}.read.{partition}"

    def reply_subject(self, replica: str) -> str:
        """Where owners send the answers to writes a replica logged."""
        return f"{self.prefix}.reply.{replica}"

    @property
    def dead_stream(self) -> str:
        """The JetStream stream holding the writes an owner could not apply (dead letters)."""
        return f"{self.prefix}-dead"

    def dead_subject(self, partition: int) -> str:
        return f"{self.prefix}.dead.{partition}"

    @property
    def dead_subjects(self) -> str:
        return f"{self.prefix}.dead.*"

    @property
    def lease_bucket(self) -> str:
        return f"{self.prefix}-leases"

    @property
    def replica_bucket(self) -> str:
        return f"{self.prefix}-replicas"

    @property
    def templates_bucket(self) -> str:
        return f"{self.prefix}-templates"

    @property
    def labels_bucket(self) -> str:
        return f"{self.prefix}-labels"

    @staticmethod
    def lease_key(partition: int) -> str:
        return f"p{partition}"
