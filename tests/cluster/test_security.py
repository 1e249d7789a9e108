"""Cluster mode behind the single-node guard: keys from the shared Redis work on every replica, tenants'
namespaces hold across replicas, and a replica refuses to serve another address than loopback without keys.

Its own small cluster (two replicas): keys exist in its Redis from the start, so every request is checked.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import PARTITIONS, SPEC, Cluster
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import ServerError, TrackinServer
from trackin.cli import main
from trackin_client import PartitionMap

pytestmark = pytest.mark.slow

OBS = {"x": [0.1, -0.2, 0.3], "y": 0.25}


def make_key(redis_url: str, tenant: str, scopes: str) -> str:
    """``trackin keys create`` against the cluster's Redis, as an operator would run it."""
    with contextlib.redirect_stdout(out := io.StringIO()):
        assert main(["keys", "--redis-url", redis_url, "create", "--tenant", tenant, "--scopes", scopes]) == 0
    return out.getvalue().strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    base: Path = tmp_path_factory.mktemp("secured")
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis") as redis:
        keys = {
            "alpha": make_key(redis.url, "alpha", "ingest,read,admin"),
            "beta": make_key(redis.url, "beta", "ingest,read,admin"),
            "reader": make_key(redis.url, "alpha", "read"),
        }
        made = Cluster(base, nats, redis, headers=bearer(keys["alpha"]))
        try:
            made.add(2)
            made.wait_ready()
            yield made, keys
        finally:
            for replica in made.replicas:
                replica.close()


def test_no_key_is_refused_on_every_replica(secured: tuple[Cluster, dict[str, str]]) -> None:
    cluster, keys = secured
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


def test_tenants_cannot_reach_each_other_through_any_replica(secured: tuple[Cluster, dict[str, str]]) -> None:
    cluster, keys = secured
    one, two = (r.url for r in cluster.live())
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


def test_a_replica_off_loopback_without_keys_refuses_to_start(
    secured: tuple[Cluster, dict[str, str]],
) -> None:
    cluster, _ = secured
    env = cluster.env("open")
    env["TRACKIN_REDIS_URL"] = cluster.redis.url.removesuffix("/0") + "/1"  # a database with no keys
    server = TrackinServer(cluster.base / "open", env=env, store=None, args=["--host", "0.0.0.0"])
    with pytest.raises(ServerError):
        server.start()
    server.close()
    assert "refusing to serve 0.0.0.0 without API keys" in server.logs()
