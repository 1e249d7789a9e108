"""Cluster mode end to end: traffic, a replica killed, a replica paused past its lease, a fourth replica,
NATS restarted. Each test checks the invariants of `tests.cluster` on its own streams."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.cluster import PARTITIONS, TTL, Cluster, Load, check_against_reference, create_streams, partition

pytestmark = pytest.mark.slow


async def test_traffic_through_any_replica_matches_a_single_node(cluster: Cluster) -> None:
    streams = create_streams(cluster, "traffic", 300)
    load = Load(streams, seed=1)
    urls = [r.url for r in cluster.live()]
    await load.run(lambda: urls, per_stream=6)
    assert set(load.statuses) == {200}, load.statuses
    check_against_reference(cluster, load)
    # The map is what an owner-aware client needs: every partition owned by a live replica, the same hash.
    mapped = cluster.map()
    assert mapped["partitions"] == PARTITIONS
    assert set(mapped["owners"]) <= set(mapped["replicas"])
    owner = mapped["owners"][partition(streams[0])]
    direct = httpx.get(f"{mapped['replicas'][owner]}/v1/streams/{streams[0]}")
    assert direct.json()["figures"]["steps"] == 6
