"""Operating the cluster: the log trimmed behind the checkpoints still restores exactly, and a message the
owner cannot apply goes to the dead letters instead of blocking its partition."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import nats
import pytest
from nats.aio.client import Client

from tests.cluster import Cluster, Load, check_against_reference, create_streams, partition
from tests.cluster.test_cluster import _watch_owners

pytestmark = pytest.mark.slow

LOG = "trackin-log"


def counter(cluster: Cluster, name: str) -> float:
    """A cluster counter summed over the live replicas' /metrics."""
    total = 0.0
    for replica in cluster.live():
        text = httpx.get(f"{replica.url}/metrics", headers=cluster.headers, timeout=5).text
        total += sum(float(v) for v in re.findall(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE))
    return total


async def kept(nc: Client) -> dict[str, int]:
    """Messages still in the log, per partition subject."""
    info = await nc.jetstream().stream_info(LOG, subjects_filter="trackin.log.*")
    return dict(info.state.subjects or {})


async def test_a_trimmed_log_restores_exactly_after_a_kill(cluster: Cluster) -> None:
    active = create_streams(cluster, "trim", 40)
    idle = create_streams(cluster, "trim-idle", 8)  # never observed: must not hold the trimming back
    urls = [r.url for r in cluster.live()]
    load = Load(active, seed=11, headers=cluster.headers)
    await load.run(lambda: urls, per_stream=6)
    assert set(load.statuses) == {200}, load.statuses
    nc = await nats.connect(cluster.nats.url)
    try:
        published = (await nc.jetstream().stream_info(LOG)).state.last_seq
        # Checkpoints every second: then every partition's log is purged up to what they cover, which
        # once traffic stops is everything (idle streams included), past the retention (13 s here).
        deadline = time.monotonic() + 45
        while sum((left := await kept(nc)).values()) > 0:
            assert time.monotonic() < deadline, f"log not trimmed: {left} of {published} messages kept"
            await asyncio.sleep(0.25)
    finally:
        await nc.close()
    assert counter(cluster, "trackin_cluster_log_trims_total") > 0

    # A tail after the trim, then the owner of some of these streams dies without a last checkpoint: its
    # successors restore the checkpoints and replay a log whose head was purged.
    victim = cluster.live()[-1]
    name = cluster.name(victim)
    lost = cluster.owned_by(victim)
    assert {partition(s) for s in active} & lost
    survivors = [r.url for r in cluster.live() if r is not victim]
    await load.run(lambda: urls, per_stream=3)
    victim.kill()
    figures: dict[str, float] = {}
    await _watch_owners(cluster, survivors[0], name, time.monotonic(), figures)
    cluster.wait_ready()
    check_against_reference(cluster, load)
    check_against_reference(cluster, Load(idle, headers=cluster.headers))
    cluster.add()  # leave as many replicas as found
    cluster.wait_ready()


async def test_a_poison_message_is_dead_lettered_and_its_partition_goes_on(cluster: Cluster) -> None:
    (stream,) = create_streams(cluster, "poison", 1)
    p = partition(stream)
    owner = cluster.map()["owners"][p]
    before = counter(cluster, "trackin_cluster_dead_letters_total")
    nc = await nats.connect(cluster.nats.url)
    try:
        js = nc.jetstream()
        # A write no front would log: its expiry is not a time. The owner cannot apply it.
        headers = {"Trackin-Op": "observe", "Trackin-Stream": stream, "Trackin-Expires": "soon"}
        ack = await js.publish(f"trackin.log.{p}", b'{"x": [0.1, 0.2, 0.3], "y": 1.0}', headers=headers)
        load = Load([stream], seed=12, headers=cluster.headers)
        await load.run(lambda: [r.url for r in cluster.live()], per_stream=4)
        assert set(load.statuses) == {200}, load.statuses  # the partition was not blocked
        dead = await js.get_last_msg("trackin-dead", f"trackin.dead.{p}")
    finally:
        await nc.close()
    assert dead.headers is not None
    assert dead.headers["Trackin-Dead-Seq"] == str(ack.seq)
    assert dead.headers["Trackin-Dead-Error"].startswith("ValueError")
    assert dead.headers["Trackin-Stream"] == stream
    assert counter(cluster, "trackin_cluster_dead_letters_total") == before + 1
    assert cluster.map()["owners"][p] == owner  # applied on, not given up
    check_against_reference(cluster, load)  # the poison message changed nothing
