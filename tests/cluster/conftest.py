"""One cluster for the session: nats-server, redis-server and three replicas, started once (about 10-20 s);
tests that kill, pause or add replicas leave three healthy ones behind. API keys exist in its Redis from
the start (made with ``trackin keys create``, as an operator would), so every request is checked by the
guard: the helpers send the ``default`` tenant's admin key. A failing test's report carries every
replica's log tail."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, make_key
from tests.support.nats_server import NatsServer, nats_server_binary
from tests.support.redis_server import RedisServer, redis_server_binary

if nats_server_binary() is None or redis_server_binary() is None:
    pytest.skip("cluster tests need nats-server and redis-server", allow_module_level=True)

_CLUSTERS: list[Cluster] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base: Path = tmp_path_factory.mktemp("cluster")
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis") as redis:
        keys = {
            "default": make_key(redis.url, "default", "ingest,read,admin"),
            "alpha": make_key(redis.url, "alpha", "ingest,read,admin"),
            "beta": make_key(redis.url, "beta", "ingest,read,admin"),
            "reader": make_key(redis.url, "alpha", "read"),
        }
        made = Cluster(base, nats, redis, keys)
        _CLUSTERS.append(made)
        try:
            made.add(3)
            made.wait_ready()
            yield made
        finally:
            _CLUSTERS.remove(made)
            for replica in made.replicas:
                replica.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        for made in _CLUSTERS:
            for replica in made.replicas:
                report.sections.append((f"replica {made.name(replica)}", replica.describe()))
    return report
