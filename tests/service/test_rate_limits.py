"""Per-key request rates and per-tenant observation rates (429 with Retry-After), per-tenant quotas on
streams and bytes (507), on real servers: counters in the process (SQLite store) or in Redis."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.service import LINEAR, check_error_body
from tests.service.conftest import SHARED_ENV
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.server import ServerError, TrackinServer
from trackin.cli import main
from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec
from trackin.service.errors import RateLimited
from trackin.service.security.limiter import Limiter

MLP = {"model": {"family": "mlp", "in_dim": 4, "hidden": [64]}}
PER_KEY = 6
PER_TENANT = 4


def make_key(where: list[str], tenant: str, scopes: str) -> str:
    with contextlib.redirect_stdout(out := io.StringIO()):
        assert main(["keys", *where, "create", "--tenant", tenant, "--scopes", scopes]) == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp(f"limited-{request.param}")
    linear = slot_bytes(StreamSpec.model_validate(LINEAR))
    env = {
        **SHARED_ENV,
        "TRACKIN_RATE_LIMIT_PER_KEY": f"{PER_KEY}/minute",
        "TRACKIN_TENANT_OBSERVATIONS_RATE": f"{PER_TENANT}/minute",
        "TRACKIN_TENANT_MAX_STREAMS": "2",
        "TRACKIN_TENANT_MAX_BYTES": str(4 * linear),  # room for two linear streams, not for the MLP
    }
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            if redis_server_binary() is None:
                pytest.skip("redis-server not installed")
            redis_server = stack.enter_context(RedisServer(data_dir / "redis"))
            where = ["--redis-url", redis_server.url, "--store", "redis"]
            env["TRACKIN_REDIS_URL"] = redis_server.url
        else:
            redis_server = None
            where = ["--data-dir", str(data_dir), "--store", "sqlite"]
        keys = {name: make_key(where, name, "ingest,read,admin") for name in ("rated", "observer", "quota")}
        server = stack.enter_context(TrackinServer(data_dir, env=env, store=request.param))
        yield server, keys, redis_server


def client(server: TrackinServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_key_over_its_rate_gets_429_with_retry_after(limited: Any) -> None:
    server, keys, redis_server = limited
    with client(server, keys["rated"]) as http:
        statuses = [http.get("/v1/streams").status_code for _ in range(PER_KEY)]
        refused = http.get("/v1/streams")
        fast_path = http.post("/v1/streams/s/observations", json={"x": [1, 2, 3], "y": 1})
    assert statuses == [200] * PER_KEY
    for response in (refused, fast_path):
        assert response.status_code == 429, response.text
        assert 1 <= int(response.headers["retry-after"]) <= 60
        check_error_body(response.json(), "rate_limited")
    with client(server, keys["observer"]) as other:  # another key has its own bucket
        assert other.get("/v1/streams").status_code == 200
    if redis_server is not None:  # shared by every replica: the counters are in Redis
        counters = list(redis.Redis.from_url(redis_server.url).scan_iter("trackin:limits*"))
        assert counters, "no rate counters in Redis"


def test_a_tenant_over_its_observation_rate_gets_429(limited: Any) -> None:
    server, keys, _ = limited
    observation = {"x": [0.1, 0.2, 0.3], "y": 1.0}
    with client(server, keys["observer"]) as http:
        assert http.put("/v1/streams/o1", json=LINEAR).status_code == 201
        assert http.post("/v1/streams/o1/observations", json=[observation] * 3).status_code == 200
        refused = http.post("/v1/streams/o1/observations", json=[observation] * 2)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        check_error_body(refused.json(), "rate_limited")
        assert http.get("/v1/streams/o1").json()["figures"]["steps"] == 3  # nothing of it applied


def test_tenant_quotas_on_streams_and_bytes_answer_507(limited: Any) -> None:
    server, keys, _ = limited
    with client(server, keys["quota"]) as http:
        assert http.put("/v1/streams/q1", json=MLP).status_code == 507  # bytes
        assert http.put("/v1/streams/q1", json=LINEAR).status_code == 201
        assert http.put("/v1/streams/q2", json=LINEAR).status_code == 201
        over = http.put("/v1/streams/q3", json=LINEAR)  # streams
        assert over.status_code == 507, over.text
        check_error_body(over.json(), "tenant_quota", stream="q3")
        assert "quota" in over.json()["error"]["message"]
        assert http.get("/v1/streams").json()["streams"] == ["q1", "q2"]


def test_a_non_loopback_address_needs_keys_or_insecure(tmp_path: Path) -> None:
    anywhere = ["--host", "0.0.0.0"]
    refused = TrackinServer(tmp_path / "open", args=anywhere)
    try:
        with pytest.raises(ServerError, match="exited at start with 3"):
            refused.start()
        assert "refusing to serve 0.0.0.0 without API keys" in refused.logs()
    finally:
        refused.close()
    with TrackinServer(tmp_path / "insecure", args=[*anywhere, "--insecure"]) as server:
        assert httpx.get(f"{server.url}/v1/streams").status_code == 200
    admin = "a" * 40
    env = {"TRACKIN_BOOTSTRAP_ADMIN_KEY": admin}
    with TrackinServer(tmp_path / "keyed", args=anywhere, env=env) as server:  # memory store, one key
        assert httpx.get(f"{server.url}/v1/streams").status_code == 401
        headers = {"Authorization": f"Bearer {admin}"}
        assert httpx.get(f"{server.url}/v1/streams", headers=headers).status_code == 200


async def test_rates_are_not_enforced_while_their_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter("1/minute", "1/minute", f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    for _ in range(3):  # nothing listens: admitted (a warning), not a 500
        await limiter.admit_key("k")
        await limiter.admit_observations("t", 5)
    assert "rate limits not applied" in caplog.text
    local = Limiter("1/minute", None)
    await local.admit_key("k")
    with pytest.raises(RateLimited):
        await local.admit_key("k")
