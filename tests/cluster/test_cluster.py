"""Cluster mode end to end: traffic, a replica killed, a replica paused past its lease, a fourth replica,
NATS restarted. Each test checks the invariants of `tests.cluster` on its own streams."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg

from tests.cluster import PARTITIONS, TTL, Cluster, Load, check_against_reference, create_streams, partition
from trackin_client import PartitionMap, TrackinClient

pytestmark = pytest.mark.slow


async def test_traffic_through_any_replica_matches_a_single_node(cluster: Cluster) -> None:
    streams = create_streams(cluster, "traffic", 120)
    load = Load(streams, seed=1, headers=cluster.headers)
    urls = [r.url for r in cluster.live()]
    await load.run(lambda: urls, per_stream=5)
    assert set(load.statuses) == {200}, load.statuses
    check_against_reference(cluster, load)
    # The map is what an owner-aware client needs: every partition owned by a live replica, the same hash.
    mapped = cluster.map()
    assert mapped["partitions"] == PARTITIONS
    assert set(mapped["owners"]) <= set(mapped["replicas"])
    routes = PartitionMap.fetch(urls[0], api_key=cluster.keys["default"])
    for stream in streams[:10]:
        owner = mapped["owners"][partition(stream)]
        assert routes.owner_url(stream) == mapped["replicas"][owner]
        with TrackinClient(routes.owner_url(stream) or urls[0], api_key=cluster.keys["default"]) as client:
            assert client.get_stream(stream)["figures"]["steps"] == 5


async def _watch_owners(
    cluster: Cluster,
    via: str,
    gone: str,
    since: float,
    out: dict[str, float],
    stop: asyncio.Event | None = None,
) -> None:
    """Record when no partition is mapped to ``gone`` any more and every partition is owned; then set
    ``stop`` a second later (the load goes on past the move)."""
    async with httpx.AsyncClient(timeout=2, headers=cluster.headers) as http:
        while "moved" not in out:
            try:
                owners = (await http.get(f"{via}/v1/cluster/partitions")).json()["owners"]
            except httpx.TransportError:
                owners = [gone]
            if gone not in owners and None not in owners:
                out["moved"] = time.monotonic() - since
            await asyncio.sleep(0.05)
    if stop is not None:
        await asyncio.sleep(1.0)
        stop.set()


async def test_sigkill_under_load_loses_nothing_and_refuses_only_moving_partitions(cluster: Cluster) -> None:
    streams = create_streams(cluster, "kill", 80)
    victim = cluster.live()[-1]
    name = cluster.name(victim)
    lost = cluster.owned_by(victim)
    assert lost
    survivors = [r.url for r in cluster.live() if r is not victim]
    load, stop = Load(streams, seed=2, headers=cluster.headers), asyncio.Event()
    figures: dict[str, float] = {}
    marks: dict[int, int] = {}  # log length per replica at the kill

    async def kill_soon() -> None:
        await asyncio.sleep(1.0)
        marks.update({r.port: len(r.logs()) for r in cluster.live()})
        killed = time.monotonic()
        victim.kill()
        await _watch_owners(cluster, survivors[0], name, killed, figures, stop)

    await asyncio.gather(load.run(lambda: survivors, stop=stop, pause=0.2), kill_soon())
    restores = [  # the survivors' restores of the partitions they took after the kill, from their logs
        float(m.group(1))
        for r in cluster.live()
        for m in re.finditer(r"restored in ([0-9.]+) s", r.logs()[marks[r.port] :])
    ]
    print(
        f"\nSIGKILL: partitions moved {figures['moved']:.2f} s after the kill (lease TTL {TTL} s); "
        f"restores after it took {max(restores, default=float('nan')):.3f} s at most"
    )
    print(f"statuses: {load.statuses}")
    refused = load.refused_streams()
    assert {partition(s) for s in refused} <= lost, "503 only for the killed replica's partitions"
    cluster.wait_ready()
    check_against_reference(cluster, load)
    # Not restarted: the next tests run on the survivors, and the fourth replica joins them.


async def test_replica_paused_past_its_lease_applies_and_answers_nothing_it_lost(cluster: Cluster) -> None:
    import nats

    streams = create_streams(cluster, "pause", 60)
    victim = cluster.live()[0]
    name = cluster.name(victim)
    before = cluster.owned_by(victim)
    assert before
    others = [r.url for r in cluster.live() if r is not victim]
    logged = {cluster.name(r): len(r.logs()) for r in cluster.live()}  # what the replicas said before
    nc = await nats.connect(cluster.nats.url)
    newest: dict[int, int] = {}  # partition -> newest fencing token seen answering
    late: list[asyncio.Task[tuple[str, int, int, Any]]] = []
    """(owner, partition, log sequence, stored time) of answers with an old token, looked up at once: the
    log keeps a message only the retention (13 s here) once checkpoints cover it."""
    js = nc.jetstream()

    async def stored(owner: str, p: int, seq: int) -> tuple[str, int, int, Any]:
        return owner, p, seq, (await js.get_msg("trackin-log", seq=seq)).time

    async def watch(msg: Msg) -> None:
        """Once an owner with a newer token answered for a partition, an answer with an older token is
        suspect: the old owner may only be delivering late what it applied before it lost the lease."""
        headers = msg.headers or {}
        p, token = partition(headers["Trackin-Stream"]), int(headers["Trackin-Token"])
        if token < newest.get(p, 0):
            late.append(asyncio.create_task(stored(headers["Trackin-Owner"], p, int(headers["Trackin-Seq"]))))
        newest[p] = max(newest.get(p, 0), token)

    sub = await nc.subscribe("trackin.reply.*", cb=watch)
    load = Load(streams, seed=3, headers=cluster.headers)
    try:
        # Traffic for its partitions is in flight when it stops: its consumers hold messages not to apply.
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(lambda: others, stop=stop, pause=0.2))
        await asyncio.sleep(0.5)
        victim.send_signal(signal.SIGSTOP)
        paused = time.time()
        try:
            figures: dict[str, float] = {}
            await _watch_owners(cluster, others[0], name, time.monotonic(), figures, stop)
            await running
            print(f"\nSIGSTOP: partitions moved {figures['moved']:.2f} s after the pause (lease TTL {TTL} s)")
        finally:
            victim.send_signal(signal.SIGCONT)
        # Awake: it serves as a front at once, and takes partitions again.
        await load.run(lambda: [r.url for r in cluster.live()], per_stream=3)
        cluster.wait_ready(condition=lambda: bool(cluster.owned_by(victim)))
        # Split brain: an old-token answer to a write JetStream stored after the pause, i.e. one the paused
        # replica applied after waking up, when its lease had lapsed.
        found = await asyncio.gather(*late)
        split = [(o, p, q, t) for o, p, q, t in found if t is not None and t.timestamp() > paused + 0.05]
    finally:
        await sub.unsubscribe()
        await nc.close()
    assert not split, f"split brain: {len(split)} answers after losing the lease, e.g. {split[:3]}"
    assert newest
    assert "lease lapsed" in victim.logs()
    # 503 only for partitions in flight: the ones it lost, the ones it took back when it rejoined, and any
    # whose lease lapsed on another replica meanwhile (on a loaded machine their renewals run late too)
    lapsed = {
        int(p)
        for r in cluster.live()
        for p in re.findall(r"partition (\d+): lease lapsed", r.logs()[logged.get(cluster.name(r), 0) :])
        if r is not victim
    }
    assert {partition(s) for s in load.refused_streams()} <= before | cluster.owned_by(victim) | lapsed
    check_against_reference(cluster, load)


async def test_a_fourth_replica_takes_its_share_under_load(cluster: Cluster) -> None:
    streams = create_streams(cluster, "grow", 40)
    before = cluster.map()["owners"]
    urls = [r.url for r in cluster.live()]
    load, stop = Load(streams, seed=4, headers=cluster.headers), asyncio.Event()

    async def grow() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.add)
        await asyncio.sleep(2 * TTL)  # the newcomer's heartbeat is seen, the others release, it takes
        stop.set()

    await asyncio.gather(load.run(lambda: urls, stop=stop, pause=0.2), grow())
    newcomer = cluster.live()[-1]
    share = -(-PARTITIONS // len(cluster.live()))
    cluster.wait_ready(
        condition=lambda: (
            bool(cluster.owned_by(newcomer))
            and all(len(cluster.owned_by(r)) <= share for r in cluster.live())
        )
    )
    after = cluster.map()["owners"]
    moved = {p for p in range(PARTITIONS) if before[p] != after[p]}
    print(f"\nfourth replica: {len(moved)} partitions moved; statuses {load.statuses}")
    assert len(moved) <= share + 1, f"only the newcomer's share moves: {before} -> {after}"
    assert {partition(s) for s in load.refused_streams()} <= moved
    check_against_reference(cluster, load)
    assert newcomer.stop() == 0  # SIGTERM: its partitions are checkpointed and released
    cluster.wait_ready()


async def test_nats_restart_mid_traffic_refuses_then_recovers_by_itself(cluster: Cluster) -> None:
    streams = create_streams(cluster, "nats", 30)
    urls = [r.url for r in cluster.live()]
    load, stop = Load(streams, seed=5, headers=cluster.headers), asyncio.Event()

    async def restart() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.nats.stop)
        await asyncio.sleep(4.0)  # longer than a front waits for a publish acknowledgement
        await asyncio.to_thread(cluster.nats.start)
        await asyncio.sleep(1.0)
        stop.set()

    await asyncio.gather(load.run(lambda: urls, stop=stop, pause=0.2), restart())
    print(f"\nNATS restart: statuses {load.statuses}")
    assert load.statuses.get(503), "requests while NATS is down get 503"
    recovered = cluster.wait_ready(timeout=40)
    print(f"ready again {recovered:.2f} s after the load ended")
    check_against_reference(cluster, load)
