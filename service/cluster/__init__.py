"""Cluster mode (opt-in, ``TRACKIN_CLUSTER_NATS_URL``): replicas on NATS JetStream, one owner per partition.

- `partitions`: stream id -> partition (``crc32 mod P``), and every NATS name.
- `jetstream`: the connection, the log stream and the KV buckets.
- `book`, `leases`: leases per partition (compare-and-set on the revision, TTL), even spread.
- `owner`: per owned partition, restore + replay + apply in log order, answer the waiting front.
- `store`, `persistence`: checkpoints fenced by the lease revision; the registry's `Persistence`.
- `front`, `routes`, `app`: any replica accepts any request and forwards it through NATS.

docs/scale-out.md tells the design, the failure cases and what each costs.
"""

from trackin.service.cluster.app import build_cluster, create_cluster_app
from trackin.service.cluster.partitions import partition_of

__all__ = ["build_cluster", "create_cluster_app", "partition_of"]
