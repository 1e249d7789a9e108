"""End-to-end tests of cluster mode: real replicas (``trackin serve`` processes), one real nats-server, one
real redis-server, real HTTP clients; the helpers every module uses live here.

Invariants checked after every fault: each stream's step count equals the observations acknowledged for
it (200, or 202 "logged"), every answered observation's step and prediction equal an in-process engine's
fed the acknowledged observations in the same order, and a 503 carries Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.service import LINEAR, assert_close
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import TrackinServer
from trackin.cli import main
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

__all__ = ["PARTITIONS", "TTL", "Cluster", "Load", "bearer", "make_key", "partition"]

PARTITIONS = 12
TTL = 3.0
SPEC = LINEAR


def partition(stream_id: str) -> int:
    """The service's hash, computed independently (as an owner-aware client would)."""
    return zlib.crc32(stream_id.encode()) % PARTITIONS


def make_key(redis_url: str, tenant: str, scopes: str) -> str:
    """``trackin keys create`` against the cluster's Redis, as an operator would run it."""
    with contextlib.redirect_stdout(out := io.StringIO()):
        assert main(["keys", "--redis-url", redis_url, "create", "--tenant", tenant, "--scopes", scopes]) == 0
    return out.getvalue().strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Cluster:
    """Replicas sharing one NATS and one Redis."""

    def __init__(
        self,
        base: Path,
        nats: NatsServer,
        redis: RedisServer,
        keys: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.extra_env = env or {}
        """Settings every replica gets on top of the defaults below (tenant quotas, rates)."""
        self.nats = nats
        self.redis = redis
        self.replicas: list[TrackinServer] = []
        self.keys = keys or {}
        """API keys by name; ``default``: the default tenant's admin key, which the helpers send (none:
        the cluster runs open, as on loopback without keys)."""
        self.headers = bearer(self.keys["default"]) if keys else {}

    def env(self, name: str) -> dict[str, str]:
        return {
            "TRACKIN_CLUSTER_NATS_URL": self.nats.url,
            "TRACKIN_REDIS_URL": self.redis.url,
            "TRACKIN_CLUSTER_PARTITIONS": str(PARTITIONS),
            "TRACKIN_CLUSTER_LEASE_TTL_SECONDS": str(TTL),
            "TRACKIN_CLUSTER_REPLICA_ID": name,
            "TRACKIN_KERNELS": "torch",
            "TRACKIN_CHECKPOINT_INTERVAL_SECONDS": "1",
            "TRACKIN_CHECKPOINT_EVERY_STEPS": "100",
            "TRACKIN_CLUSTER_LOG_RETENTION_SECONDS": "0",  # the floor: the forward timeout + 3 s
            **self.extra_env,
        }

    def add(self, count: int = 1) -> TrackinServer:
        """Start ``count`` more replicas at once (their start-ups overlap); the last one."""
        servers = []
        for _ in range(count):
            name = f"r{len(self.replicas) + 1}"
            servers.append(TrackinServer(self.base / name, env=self.env(name), store=None))
            self.replicas.append(servers[-1])
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: s.start(), servers))
        return servers[-1]

    def live(self) -> list[TrackinServer]:
        return [r for r in self.replicas if r.running]

    def name(self, server: TrackinServer) -> str:
        return server.env["TRACKIN_CLUSTER_REPLICA_ID"]

    def map(self, via: TrackinServer | None = None) -> dict[str, Any]:
        server = via or self.live()[0]
        url = f"{server.url}/v1/cluster/partitions"
        body: dict[str, Any] = httpx.get(url, headers=self.headers, timeout=5).json()
        return body

    def owned_by(self, server: TrackinServer) -> set[int]:
        name = self.name(server)
        return {p for p, owner in enumerate(self.map()["owners"]) if owner == name}

    def wait_ready(self, timeout: float = 30.0, condition: Callable[[], bool] = lambda: True) -> float:
        """Until every live replica is ready (all its partitions serving), every partition has a live owner,
        the partitions are spread evenly and ``condition`` holds; the seconds it took."""
        started = time.monotonic()
        names = {self.name(r) for r in self.live()}
        while True:
            try:
                ready = all(httpx.get(f"{r.url}/readyz", timeout=2).status_code == 200 for r in self.live())
                owners = self.map()["owners"]
                share = -(-PARTITIONS // len(names))
                balanced = all(0 < owners.count(n) <= share for n in names)
                if ready and balanced and all(o in names for o in owners) and condition():
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            assert time.monotonic() - started < timeout, f"cluster not ready in {timeout}s: {self.map()}"
            time.sleep(0.1)


@dataclass
class StreamLog:
    """What a client saw for one stream: acknowledged observations in order, answers, refusals."""

    acked: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(index into ``acked``, the answer's result) for 200s."""
    refused: list[float] = field(default_factory=list)
    """When each 503 came (time.monotonic())."""
    ambiguous: dict[str, Any] | None = None
    """An observation whose answer was lost to a transport error: logged or not, the client cannot know
    (nothing more is sent for the stream, so it is the last one and may or may not count)."""


class Load:
    """Clients posting observations of many streams to random replicas, each stream's in order (the next
    only after the previous one's answer), so the acknowledged order is the order applied."""

    def __init__(self, streams: Sequence[str], seed: int = 0, headers: dict[str, str] | None = None) -> None:
        self.streams = list(streams)
        self.headers = headers or {}
        self.logs = {s: StreamLog() for s in streams}
        self._rng = random.Random(seed)
        self.statuses: dict[int, int] = {}

    def observation(self) -> dict[str, Any]:
        x = [round(self._rng.uniform(-1, 1), 3) for _ in range(3)]
        return {"x": x, "y": round(0.5 * x[0] - x[1] + 0.25 * x[2] + self._rng.gauss(0, 0.05), 4)}

    async def run(
        self,
        targets: Callable[[], list[str]],
        *,
        per_stream: int | None = None,
        stop: asyncio.Event | None = None,
        pause: float = 0.0,
        concurrency: int = 48,
    ) -> None:
        """Post until each stream sent ``per_stream`` observations, or until ``stop`` is set."""
        # No keep-alive: a request sent on a connection the server is just closing as idle fails with a
        # ReadError whose observation may or may not have been logged, and this client's event loop, busy
        # with hundreds of streams on a loaded machine, can fall behind the server's keep-alive timer.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits, headers=self.headers) as http:

            async def one(stream: str) -> None:
                sent = 0
                log = self.logs[stream]
                while (per_stream is None or sent < per_stream) and not (stop is not None and stop.is_set()):
                    if log.ambiguous is not None:
                        return
                    async with gate:
                        await self._post(http, targets, stream)
                    sent += 1
                    if pause:
                        await asyncio.sleep(pause)

            await asyncio.gather(*(one(s) for s in self.streams))

    async def _post(self, http: httpx.AsyncClient, targets: Callable[[], list[str]], stream: str) -> None:
        obs, log = self.observation(), self.logs[stream]
        url = self._rng.choice(targets())
        try:
            response = await http.post(f"{url}/v1/streams/{stream}/observations", json=obs)
        except httpx.TransportError:
            log.ambiguous = obs
            self.statuses[0] = self.statuses.get(0, 0) + 1
            return
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 200:
            log.answers.append((len(log.acked), response.json()["results"][0]))
            log.acked.append(obs)
        elif response.status_code == 202:
            assert response.json()["status"] == "logged", response.text
            log.acked.append(obs)
        elif response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1, response.headers
            assert response.json()["error"]["code"] == "unavailable", response.text
            log.refused.append(time.monotonic())
        else:
            raise AssertionError(f"{stream}: {response.status_code} {response.text}")

    def refused_streams(self) -> set[str]:
        return {s for s, log in self.logs.items() if log.refused}


def create_streams(cluster: Cluster, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    urls = [r.url for r in cluster.live()]
    with httpx.Client(timeout=30, headers=cluster.headers) as http:
        for i, stream in enumerate(ids):
            response = http.put(f"{urls[i % len(urls)]}/v1/streams/{stream}", json=SPEC)
            assert response.status_code == 201, response.text
    return ids


def check_against_reference(cluster: Cluster, load: Load, timeout: float = 20.0) -> None:
    """Every stream's steps equal its acknowledged observations (waiting for logged ones to apply), every
    answered observation equals the reference engine's, and so does a prediction made now."""
    spec = StreamSpec.model_validate(SPEC)
    engine = Engine("cpu", kernels="torch")
    probe = [0.3, -0.2, 0.1]
    urls = [r.url for r in cluster.live()]
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10, headers=cluster.headers) as http:
        for stream, log in load.logs.items():
            engine.add(stream, spec)
            results = [
                engine.observe(
                    [stream], [np.asarray(o["x"], np.float64)], [np.asarray([o["y"]], np.float64)]
                )[0]
                for o in log.acked
            ]
            for index, answer in log.answers:
                want = results[index]
                assert answer["step"] == want.step, f"{stream} answer {index}: {answer} != step {want.step}"
                assert_close(
                    answer["prediction"], want.prediction, f"{stream} answer {index}", step=want.step
                )
            while True:
                described = http.get(f"{random.choice(urls)}/v1/streams/{stream}")
                steps = described.json()["figures"]["steps"] if described.status_code == 200 else None
                if steps == len(log.acked):
                    break
                if log.ambiguous is not None and steps == len(log.acked) + 1:
                    o = log.ambiguous  # it was logged after all: applied once, after the others
                    engine.observe(
                        [stream], [np.asarray(o["x"], np.float64)], [np.asarray([o["y"]], np.float64)]
                    )
                    break
                assert time.monotonic() < deadline, f"{stream}: {steps} steps, {len(log.acked)} acknowledged"
                time.sleep(0.1)
            predicted = http.post(f"{random.choice(urls)}/v1/streams/{stream}/predict", json={"x": probe})
            assert predicted.status_code == 200, predicted.text
            expected = engine.predict([stream], [np.asarray(probe, np.float64)])[0]
            assert_close(
                predicted.json()["prediction"], expected, f"{stream} prediction", step=len(log.acked)
            )


def by_partition(streams: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    groups: dict[int, list[str]] = {}
    for s in streams:
        groups.setdefault(partition(s), []).append(s)
    yield from sorted(groups.items())
