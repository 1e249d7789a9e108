"""Tenant quotas and the tenant observation rate in cluster mode: one count in the cluster's Redis, the same
507 and 429 answers as single-node, whichever replica a request reaches. A small cluster of its own (two
replicas), since the limits apply to every tenant of the cluster. Streams the idle sweep deletes give their
room back, as a DELETE does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.cluster import SPEC, Cluster, bearer, make_key
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

MAX_STREAMS = 3
SMALL = 739  # state bytes of the linear in_dim 3 streams (models.pool.slot_bytes), as the budget counts them
LIMITS = {
    "TRACKIN_TENANT_MAX_STREAMS": str(MAX_STREAMS),
    "TRACKIN_TENANT_MAX_BYTES": str(MAX_STREAMS * SMALL + 100),
    "TRACKIN_TENANT_OBSERVATIONS_RATE": "30/minute",
}
BIG = {"model": {"family": "linear", "in_dim": 200}}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base: Path = tmp_path_factory.mktemp("limited")
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis") as redis:
        keys = {
            "default": make_key(redis.url, "default", "ingest,read,admin"),
            **{
                t: make_key(redis.url, t, "ingest,read,admin")
                for t in ("gamma", "delta", "rate", "eps", "zeta")
            },
        }
        made = Cluster(base, nats, redis, keys, env=LIMITS)
        try:
            made.add(2)
            made.wait_ready()
            yield made
        finally:
            for replica in made.replicas:
                replica.close()


def test_stream_and_byte_quotas_are_counted_for_the_whole_cluster(limited: Cluster) -> None:
    one, two = (r.url for r in limited.live())
    gamma = bearer(limited.keys["gamma"])
    with httpx.Client(timeout=30, headers=gamma) as http:
        for i in range(MAX_STREAMS):  # through both replicas: owned by different ones
            assert http.put(f"{(one, two)[i % 2]}/v1/streams/s{i}", json=SPEC).status_code == 201
        for url in (one, two):
            refused = http.put(f"{url}/v1/streams/extra", json=SPEC)
            assert refused.status_code == 507, refused.text
            error = refused.json()["error"]
            assert error["code"] == "tenant_quota"
            assert "TRACKIN_TENANT_MAX_STREAMS" in error["message"]
            assert http.get(f"{url}/v1/streams/extra").status_code == 404  # nothing logged
        assert http.put(f"{one}/v1/streams/s0", json=SPEC).status_code == 200  # an existing one: unchanged
        assert http.delete(f"{two}/v1/streams/s0").status_code == 204  # its room is given back
        bigger = http.put(f"{two}/v1/streams/big", json=BIG)
        assert bigger.status_code == 507, bigger.text
        assert "TRACKIN_TENANT_MAX_BYTES" in bigger.json()["error"]["message"]
        assert http.put(f"{one}/v1/streams/extra", json=SPEC).status_code == 201
    # The default tenant has no quota.
    with httpx.Client(timeout=30, headers=limited.headers) as http:
        for i in range(MAX_STREAMS + 1):
            assert http.put(f"{two}/v1/streams/free{i}", json=SPEC).status_code == 201


def test_concurrent_creations_through_every_replica_pass_the_quota_only_up_to_it(limited: Cluster) -> None:
    urls = [r.url for r in limited.live()]
    delta = bearer(limited.keys["delta"])

    def create(i: int) -> int:
        url = f"{urls[i % len(urls)]}/v1/streams/c{i}"
        return httpx.put(url, json=SPEC, headers=delta, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(create, range(8)))
    assert statuses == [201] * MAX_STREAMS + [507] * (8 - MAX_STREAMS), statuses


async def test_streams_made_from_templates_are_refused_beyond_the_quota(limited: Cluster) -> None:
    """A template stream's first observation is checked at the front, before it is logged, in every write
    form; the tenant's existing template streams keep working at quota."""
    one, two = (r.url for r in limited.live())
    key = bearer(limited.keys["zeta"])
    obs = {"x": [0.1, 0.2, 0.3], "y": 1.0}
    with httpx.Client(timeout=30, headers=key) as http:
        template = {"prefix": "a-", "spec": SPEC, "idle_seconds": 3600}
        assert http.put(f"{one}/v1/templates/auto", json=template).status_code == 201
        for url in (one, two):
            assert len(http.get(f"{url}/v1/templates").json()["templates"]) == 1
        assert http.put(f"{two}/v1/streams/plain", json=SPEC).status_code == 201
        for i, url in enumerate((one, two)):  # the quota of 3 reached with 2 template streams
            made = http.post(f"{url}/v1/streams/a-{i}/observations", json=obs)
            assert made.status_code == 200, made.text

        def refused(answer: httpx.Response) -> None:
            assert answer.status_code == 507, answer.text
            error = answer.json()["error"]
            assert error["code"] == "tenant_quota"
            assert "TRACKIN_TENANT_MAX_STREAMS" in error["message"]

        for url in (one, two):
            refused(http.post(f"{url}/v1/streams/a-2/observations", json=obs))
            rows = [{"stream": "a-0", **obs}, {"stream": "a-2", **obs}]
            refused(http.post(f"{url}/v1/observations", json=rows))
            columns = {"streams": ["a-1", "a-3"], "x": [obs["x"]] * 2, "y": [1.0, 1.0]}
            refused(http.post(f"{url}/v1/observations", json=columns))
        async with connect(limited.live()[1].ws_url, additional_headers=key, open_timeout=10) as ws:
            await ws.send(orjson.dumps({"seq": 1, "observations": [{"stream": "a-4", **obs}]}).decode())
            frame = orjson.loads(await ws.recv())
            assert frame["seq"] == 1
            assert frame["error"]["code"] == "tenant_quota", frame
        for url in (one, two):
            for name in ("a-2", "a-3", "a-4"):
                assert http.get(f"{url}/v1/streams/{name}").status_code == 404  # nothing logged
        both = [{"stream": "a-0", **obs}, {"stream": "a-1", **obs}]
        assert http.post(f"{two}/v1/observations", json=both).status_code == 200
        assert http.post(f"{one}/v1/streams/a-1/observations", json=obs).status_code == 200
        steps = [http.get(f"{two}/v1/streams/a-{i}").json()["figures"]["steps"] for i in (0, 1)]
        assert steps == [2, 3]  # none of the refused writes' observations of them applied
        assert http.delete(f"{one}/v1/streams/plain").status_code == 204  # room again, but not for a big one
        big = {"prefix": "b-", "spec": BIG, "idle_seconds": 3600}
        assert http.put(f"{two}/v1/templates/big", json=big).status_code == 201
        for url in (one, two):
            assert len(http.get(f"{url}/v1/templates").json()["templates"]) == 2
        bigger = http.post(f"{one}/v1/streams/b-0/observations", json={"x": [0.1] * 200, "y": 1.0})
        assert bigger.status_code == 507, bigger.text
        assert "TRACKIN_TENANT_MAX_BYTES" in bigger.json()["error"]["message"]
        assert http.post(f"{two}/v1/streams/a-2/observations", json=obs).status_code == 200
        assert http.get(f"{one}/v1/streams/b-0").status_code == 404


async def test_the_tenant_observation_rate_is_shared_by_every_replica(limited: Cluster) -> None:
    one, two = (r.url for r in limited.live())
    key = bearer(limited.keys["rate"])
    batch = [{"x": [0.1, 0.2, 0.3], "y": 1.0}] * 10
    with httpx.Client(timeout=30, headers=key) as http:
        assert http.put(f"{one}/v1/streams/r", json=SPEC).status_code == 201
        for url in (one, two, one):  # 30 observations, the minute's rate, through both replicas
            ok = http.post(f"{url}/v1/streams/r/observations", json=batch)
            assert ok.status_code == 200, ok.text
        for url in (two, one):
            refused = http.post(f"{url}/v1/streams/r/observations", json=batch)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "rate_limited"
        many = http.post(f"{two}/v1/observations", json={"observations": [{"stream": "r", **batch[0]}]})
        assert many.status_code == 429, many.text
        async with connect(limited.live()[0].ws_url, additional_headers=key, open_timeout=10) as ws:
            await ws.send(orjson.dumps({"seq": 1, "observations": [{"stream": "r", **batch[0]}]}).decode())
            frame = orjson.loads(await ws.recv())
            assert frame["seq"] == 1
            assert frame["error"]["code"] == "rate_limited", frame
        assert http.get(f"{two}/v1/streams/r").json()["figures"]["steps"] == 30  # nothing refused applied


def test_streams_the_idle_sweep_deletes_give_their_room_back(limited: Cluster) -> None:
    one, two = (r.url for r in limited.live())
    obs = {"x": [0.1, 0.2, 0.3], "y": 1.0}
    with httpx.Client(timeout=30, headers=bearer(limited.keys["eps"])) as http:
        template = {"prefix": "t-", "spec": SPEC, "idle_seconds": 1.0}
        assert http.put(f"{one}/v1/templates/idle", json=template).status_code == 201
        for url in (one, two):
            assert len(http.get(f"{url}/v1/templates").json()["templates"]) == 1
        for i in range(MAX_STREAMS):
            made = http.post(f"{(one, two)[i % 2]}/v1/streams/t-{i}/observations", json=obs)
            assert made.status_code == 200, made.text
        refused = http.put(f"{one}/v1/streams/other", json=SPEC)  # the template-made ones are counted
        assert refused.status_code == 507, refused.text
        deadline = time.monotonic() + 20
        while any(http.get(f"{two}/v1/streams/t-{i}").status_code != 404 for i in range(MAX_STREAMS)):
            assert time.monotonic() < deadline, "idle streams not swept"
            time.sleep(0.25)
        assert http.put(f"{two}/v1/streams/other", json=SPEC).status_code == 201
