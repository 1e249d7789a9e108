"""The WebSocket in-flight byte bound on a cluster replica: its reader stops once the answers back up,
and nothing is lost or reordered (the single node's check, tests/support/backpressure.py).

A cluster of its own (nats-server, redis-server, one replica owning every partition): the session's
cluster keeps the default bounds, and this one bounds what is in flight by weight only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.support.backpressure import check_backpressure
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(180)

IN_FLIGHT = 2  # messages of about 990 bytes within 1,024 bytes of frames: two read unanswered at most
WEIGHED = {"TRACKIN_MAX_WS_IN_FLIGHT": "10000", "TRACKIN_MAX_WS_IN_FLIGHT_BYTES": "1024"}


@pytest.fixture(scope="module")
def weighed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base: Path = tmp_path_factory.mktemp("weighed-cluster")
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis") as redis:
        made = Cluster(base, nats, redis, env=WEIGHED)
        try:
            made.add(1)
            made.wait_ready()
            yield made
        finally:
            for replica in made.replicas:
                replica.close()


async def test_a_replica_bounded_by_bytes_stops_reading_and_loses_nothing(weighed_cluster: Cluster) -> None:
    (replica,) = weighed_cluster.live()
    await check_backpressure(replica, IN_FLIGHT, weighed_cluster.headers)
