"""The overview dashboard's cluster row and the cluster alerts against a real cluster: a real Prometheus
scrapes every live replica's /metrics (with the admin key, as the guard wants), and every cluster panel's
query and every cluster alert's measure returns data; the per-replica partitions add up to the map."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cluster import PARTITIONS, Cluster, Load, create_streams
from tests.deploy.promql import CLUSTER_ALERTS, all_expressions
from tests.support.prometheus import prometheus, query, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

VARIABLES = {"instance": ".*", "stream": "-", "__rate_interval": "30s", "__interval": "30s"}


async def test_every_cluster_panel_and_alert_returns_data_from_a_real_cluster(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    replicas = cluster.live()
    targets = [r.url.removeprefix("http://") for r in replicas]
    scrape = [
        {
            "job_name": "trackin",
            "authorization": {"type": "Bearer", "credentials": cluster.keys["default"]},
            "static_configs": [{"targets": targets}],
        }
    ]
    with prometheus(tmp_path_factory.mktemp("prometheus"), scrape, [CLUSTER_ALERTS]) as url:
        streams = create_streams(cluster, "dash", 12)
        load = Load(streams, seed=21, headers=cluster.headers)
        await load.run(lambda: [r.url for r in replicas], per_stream=4)
        traffic_ended = time.time()

        def scraped_enough() -> bool:
            counts = query(url, 'count_over_time(up{job="trackin"}[1m])')
            return len(counts) == len(targets) and all(float(c["value"][1]) >= 8 for c in counts)

        def scraped_after_the_traffic() -> bool:
            latest = query(url, 'min(timestamp(up{job="trackin"}))')
            return bool(latest) and float(latest[0]["value"][1]) > traffic_ended + 1

        wait_for("8 scrapes of every replica", scraped_enough, 60)
        wait_for("a scrape after the traffic and a checkpoint", scraped_after_the_traffic, 30)

        expressions = all_expressions(VARIABLES, cluster=True)
        assert {e.kind for e in expressions} == {"panel", "alert"}
        empty = [f"{e.where}: {e.expr}" for e in expressions if not query(url, e.expr)]
        assert not empty, "no data for:\n" + "\n".join(empty)

        # Per replica: every partition owned by exactly one live replica, each replica with its share.
        owned = query(url, "sum by (instance) (trackin_cluster_partitions_owned)")
        assert sorted(o["metric"]["instance"] for o in owned) == sorted(targets)
        assert sum(float(o["value"][1]) for o in owned) == PARTITIONS
        assert all(float(o["value"][1]) >= 1 for o in owned)
        assert float(query(url, "sum(trackin_cluster_lease_changes_total)")[0]["value"][1]) >= PARTITIONS

        rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        evaluated = [r for g in rules for r in g["rules"]]
        assert len(evaluated) == sum(1 for e in expressions if e.kind == "alert")
        unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in evaluated if r["health"] != "ok"]
        assert not unhealthy, unhealthy
