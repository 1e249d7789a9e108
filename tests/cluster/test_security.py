"""Cluster mode behind the single-node guard: keys from the shared Redis work on every replica, tenants'
namespaces hold across replicas, and a replica refuses to serve another address than loopback without keys.
On the session's cluster (tests/cluster/conftest.py: keys exist in its Redis from the start)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.cluster import PARTITIONS, SPEC, Cluster, bearer
from trackin.service.app import create_app
from trackin.service.settings import Settings
from trackin_client import PartitionMap

pytestmark = pytest.mark.slow

OBS = {"x": [0.1, -0.2, 0.3], "y": 0.25}


def test_no_key_is_refused_on_every_replica(cluster: Cluster) -> None:
    keys = cluster.keys
    for replica in cluster.live():
        for headers in ({}, bearer("trk_nosuchkey_secret")):
            response = httpx.get(f"{replica.url}/v1/streams/anything", headers=headers, timeout=5)
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "unauthorized"
        assert httpx.get(f"{replica.url}/v1/cluster/partitions", timeout=5).status_code == 401
        assert httpx.get(f"{replica.url}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{replica.url}/healthz", timeout=5).status_code == 200
        # A key without the admin scope cannot create a stream, on any replica.
        put = httpx.put(f"{replica.url}/v1/streams/ro", json=SPEC, headers=bearer(keys["reader"]), timeout=5)
        assert put.status_code == 403, put.text


def test_tenants_cannot_reach_each_other_through_any_replica(cluster: Cluster) -> None:
    keys = cluster.keys
    one, two = (r.url for r in cluster.live()[:2])
    alpha, beta = bearer(keys["alpha"]), bearer(keys["beta"])
    with httpx.Client(timeout=10) as http:
        assert http.put(f"{one}/v1/streams/s", json=SPEC, headers=alpha).status_code == 201
        for url in (one, two, one):  # each tenant's writes through both replicas reach one stream
            answer = http.post(f"{url}/v1/streams/s/observations", json=OBS, headers=alpha)
            assert answer.status_code == 200, answer.text
        # beta sees no "s" through either replica, and its own "s" is another stream
        for url in (one, two):
            missing = http.get(f"{url}/v1/streams/s", headers=beta)
            assert missing.status_code == 404, missing.text
            assert "~" not in missing.text, missing.text
            assert (
                http.post(f"{url}/v1/streams/s/predict", json={"x": [0, 0, 0]}, headers=beta).status_code
                == 404
            )
        created = http.put(f"{two}/v1/streams/s", json=SPEC, headers=beta)
        assert created.status_code == 201, created.text
        assert "~" not in created.text, created.text
        assert http.post(f"{one}/v1/streams/s/observations", json=OBS, headers=beta).status_code == 200
        # A body naming another tenant's internal id is refused, nothing applied.
        sneaky = http.post(
            f"{two}/v1/streams/s/observations", json={**OBS, "stream": "~beta/s"}, headers=alpha
        )
        assert sneaky.status_code == 422, sneaky.text
        assert "~" not in http.delete(f"{one}/v1/streams/nothing", headers=beta).text
        for url in (one, two):
            mine = http.get(f"{url}/v1/streams/s", headers=alpha)
            assert mine.status_code == 200, mine.text
            assert mine.json()["figures"]["steps"] == 3, mine.text
            assert "~" not in mine.text, mine.text
            theirs = http.get(f"{url}/v1/streams/s", headers=beta).json()
            assert theirs["figures"]["steps"] == 1, theirs
        predicted = http.post(f"{two}/v1/streams/s/predict", json={"x": [0, 0, 0]}, headers=alpha)
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["stream"] == "s", predicted.text
    # The owner-aware client hashes the ids inside the caller's namespace, as every replica does.
    routes = PartitionMap.fetch(one, api_key=keys["beta"])
    assert routes.namespace == "~beta/"
    assert routes.partitions == PARTITIONS
    owner = routes.owner_url("s")
    assert owner is not None
    assert httpx.get(f"{owner}/v1/streams/s", headers=beta, timeout=5).json()["figures"]["steps"] == 1


async def test_a_replica_off_loopback_without_keys_refuses_to_start(cluster: Cluster) -> None:
    """The cluster app's start-up in process (a replica process would take seconds to import the same):
    with no key in its Redis it refuses 0.0.0.0 before connecting to anything."""
    env = cluster.env("open")
    settings = Settings(
        host="0.0.0.0",
        cluster_nats_url="nats://127.0.0.1:9",  # nothing listens: reaching NATS would hang the start
        redis_url=cluster.redis.url.removesuffix("/0") + "/1",  # a database with no keys
        cluster_partitions=int(env["TRACKIN_CLUSTER_PARTITIONS"]),
    )
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match=r"refusing to serve 0\.0\.0\.0 without API keys"):
        await asyncio.wait_for(start(), 30)  # without the rule: waits for NATS, a TimeoutError
