"""Fixtures of the persistence suite: a store backend per test, the servers that use it, and helpers.

Every test that matters runs on both backends (``backend`` is parametrized): ``sqlite`` is one file in a
directory all of the test's servers share (``--data-dir`` points there), ``redis`` is a real
``redis-server`` on a free port with AOF and ``appendfsync always`` (`tests.support.redis_server`).
Servers are real ``trackin serve`` processes (`tests.support.server.TrackinServer`) with short checkpoint
intervals, so the suite exercises the background loop in seconds. A failing test's report carries the log
tail of every server (and Redis) it used.

The reference for every number a restored stream serves is an in-process `models.engine.Engine` fed the
same observations in the same order (`Reference`): persistence must add durability, never change the
arithmetic.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.server import TrackinServer
from tests.support.tolerances import memory, step_ops, tolerance
from trackin.models.engine import Engine, ItemResult
from trackin.models.specs import TRACKIN_DEFAULTS, ARModel, StreamSpec
from trackin.service.store import SQLITE_FILENAME, Checkpoint, RedisStore, SQLiteStore, Store
from trackin.service.store.keys import RedisKeys

LINEAR: dict[str, Any] = {"model": {"family": "linear", "in_dim": 3, "init": "random", "seed": 7}}
MLP: dict[str, Any] = {"model": {"family": "mlp", "in_dim": 4, "hidden": [8], "seed": 3}}
AR: dict[str, Any] = {"model": {"family": "ar", "dim": 2, "lags": 3, "target": "delta"}}
FAMILIES: dict[str, dict[str, Any]] = {"linear": LINEAR, "mlp": MLP, "ar": AR}

# Checkpoint often, so that restores mix "checkpoint only" and "checkpoint + log tail"; fail store calls
# fast, so outages turn into 503s within a test's patience.
FAST_ENV = {
    "TRACKIN_CHECKPOINT_INTERVAL_SECONDS": "0.2",
    "TRACKIN_CHECKPOINT_EVERY_STEPS": "16",
    "TRACKIN_STORE_TIMEOUT_SECONDS": "0.5",
    "TRACKIN_LOG_LEVEL": "info",
}
# Only SIGTERM (or eviction) can write a checkpoint: for tests of exactly that path.
NO_BACKGROUND_CHECKPOINTS = {
    "TRACKIN_CHECKPOINT_INTERVAL_SECONDS": "3600",
    "TRACKIN_CHECKPOINT_EVERY_STEPS": "1000000",
}

# Batches of different sizes (the server merges concurrent requests) may round differently in float32's
# last bits, and the differences add up over a stream's memory: served values equal the reference's within
# the rule of tests/support/tolerances.py for the largest model here (MLP), the default optimizer's memory
# (momentum gamma 0.98: 50 steps) and values below 4 (squared for losses).
STEP_OPS = step_ops(StreamSpec.model_validate(MLP).model)
MEMORY = memory(decays=(TRACKIN_DEFAULTS.gamma, TRACKIN_DEFAULTS.eps_decay), lrs=(TRACKIN_DEFAULTS.lr,))
SCALE = 4.0


# ----- store backends ---------------------------------------------------------------------------------------


class Backend:
    """One store shared by all servers of a test, plus direct access to it (reads, corruption)."""

    def __init__(self, name: str, base: Path, redis_server: RedisServer | None) -> None:
        self.name = name
        self.base = base
        self.store_dir = base / "store"
        self.redis = redis_server
        self.keys = RedisKeys()
        self.spawned: list[Backend] = []

    def spawn(self) -> Backend:
        """Another, independent store of the same kind (a second deployment), removed with this one."""
        base = self.base / f"spawned-{len(self.spawned)}"
        server = RedisServer(base / "redis").start() if self.redis is not None else None
        other = Backend(self.name, base, server)
        self.spawned.append(other)
        return other

    def close(self) -> None:
        for other in self.spawned:
            other.close()
        if self.redis is not None:
            self.redis.stop()

    def server_kwargs(self) -> dict[str, Any]:
        """`TrackinServer` arguments that point a server at this store."""
        if self.redis is not None:
            return {"store": "redis", "env": {"TRACKIN_REDIS_URL": self.redis.url}}
        # A later --data-dir wins: the server logs in its own directory, stores in the shared one.
        return {"store": "sqlite", "env": {}, "args": ["--data-dir", str(self.store_dir)]}

    def open(self) -> Store:
        if self.redis is not None:
            return RedisStore(self.redis.url)
        return SQLiteStore(self.store_dir / SQLITE_FILENAME)

    def read_checkpoint(self, stream_id: str) -> Checkpoint | None:
        """The stored checkpoint, read with a fresh client (call from sync tests only)."""

        async def read() -> Checkpoint | None:
            async with self.open() as store:
                return await store.read_checkpoint(stream_id)

        return asyncio.run(read())

    def stored_step(self, stream_id: str) -> int | None:
        """The step of the stored checkpoint (None: nothing stored)."""
        checkpoint = self.read_checkpoint(stream_id)
        return None if checkpoint is None else checkpoint.step

    def raw_tensors(self, stream_id: str) -> bytes:
        """The stored tensors bytes of a checkpoint, as they are on disk or in Redis."""
        if self.redis is not None:
            with redis.Redis.from_url(self.redis.url) as client:
                value = client.hget(self.keys.checkpoint(stream_id), "tensors")
            assert isinstance(value, bytes), f"no checkpoint hash for {stream_id!r}"
            return value
        with sqlite3.connect(self.store_dir / SQLITE_FILENAME) as db:
            row = db.execute("SELECT tensors FROM checkpoints WHERE stream_id = ?", (stream_id,)).fetchone()
        assert row is not None, f"no checkpoint row for {stream_id!r}"
        return bytes(row[0])

    def overwrite_tensors(self, stream_id: str, blob: bytes) -> None:
        """Replace a checkpoint's tensors bytes behind trackin's back (servers should be stopped)."""
        if self.redis is not None:
            with redis.Redis.from_url(self.redis.url) as client:
                assert client.hset(self.keys.checkpoint(stream_id), "tensors", blob) == 0
            return
        db = sqlite3.connect(self.store_dir / SQLITE_FILENAME)
        try:
            with db:
                cursor = db.execute(
                    "UPDATE checkpoints SET tensors = ? WHERE stream_id = ?", (blob, stream_id)
                )
            assert cursor.rowcount == 1
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        sqlite = Backend("sqlite", tmp_path, None)
        yield sqlite
        sqlite.close()
        return
    yield from _redis_backend(tmp_path)


@pytest.fixture
def redis_backend(tmp_path: Path) -> Iterator[Backend]:
    """The Redis backend alone, for tests of Redis going away."""
    yield from _redis_backend(tmp_path)


def _redis_backend(tmp_path: Path) -> Iterator[Backend]:
    if redis_server_binary() is None:
        pytest.skip("redis-server not installed (scripts/system-deps installs it)")
    backend = Backend("redis", tmp_path, RedisServer(tmp_path / "redis").start())
    try:
        yield backend
    finally:
        backend.close()


# ----- servers ----------------------------------------------------------------------------------------------


class Servers:
    """Starts ``trackin serve`` processes on the test's store and stops them after the test."""

    def __init__(self, base: Path, backend: Backend | None) -> None:
        self.base = base
        self.backend = backend
        self.started: list[TrackinServer] = []

    def start(
        self, env: Mapping[str, str] | None = None, *, memory: bool = False, **kwargs: Any
    ) -> TrackinServer:
        """A server on the backend's store (``memory``: no store at all), with ``FAST_ENV`` and ``env``."""
        return self.make(env, memory=memory, **kwargs).start()

    def start_many(
        self, envs: Sequence[Mapping[str, str]], *, memory: Sequence[bool] | None = None
    ) -> list[TrackinServer]:
        """Several servers started at once (each start is seconds of imports; they overlap)."""
        made = [self.make(env, memory=bool(memory and memory[i])) for i, env in enumerate(envs)]
        return start_all(made)

    def make(
        self,
        env: Mapping[str, str] | None = None,
        *,
        memory: bool = False,
        backend: Backend | None = None,
        **kwargs: Any,
    ) -> TrackinServer:
        """A server not started yet (see `start_all`); ``backend`` overrides the test's store."""
        chosen: dict[str, Any] = {"store": "memory", "env": {}}
        if not memory:
            backend = backend or self.backend
            assert backend is not None
            chosen = backend.server_kwargs()
        server = TrackinServer(
            self.base / f"server-{len(self.started)}",
            env={**FAST_ENV, **chosen.pop("env"), **(env or {})},
            **{**chosen, **kwargs},
        )
        self.started.append(server)
        return server

    def close(self) -> None:
        """SIGKILL whatever still runs (tests check graceful stops themselves; this saves seconds)."""
        for server in self.started:
            if server.running:
                server.kill()
            server.close()


def start_all(servers: Sequence[TrackinServer]) -> list[TrackinServer]:
    """Start (or restart) servers concurrently: a start is seconds of imports, mostly waiting."""
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        return list(pool.map(lambda server: server.start(), servers))


def stop_all(servers: Sequence[TrackinServer]) -> list[int]:
    """Graceful stops (SIGTERM) at once; the exit codes."""
    for server in servers:
        server.terminate()
    return [server.wait() for server in servers]


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Servers]:
    backend: Backend | None = None
    for name in ("backend", "redis_backend"):
        if name in request.fixturenames:
            backend = request.getfixturevalue(name)
    started = Servers(tmp_path, backend)
    try:
        yield started
    finally:
        started.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        used = funcargs.get("servers")
        if isinstance(used, Servers):
            for i, server in enumerate(used.started):
                report.sections.append((f"trackin serve [{i}]", server.describe()))
    return report


# ----- HTTP helpers -----------------------------------------------------------------------------------------


class Api:
    """A synchronous client of one server, with the few calls these tests make (asserting success)."""

    def __init__(self, server: TrackinServer, timeout: float = 30.0) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, stream_id: str, spec: Mapping[str, Any]) -> None:
        response = self.http.put(f"/v1/streams/{stream_id}", json=dict(spec))
        assert response.status_code == 201, response.text

    def observe(self, stream_id: str, observations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        response = self.http.post(f"/v1/streams/{stream_id}/observations", json=list(observations))
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def describe(self, stream_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/streams/{stream_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def predict(self, stream_id: str, probe: Sequence[float] | None) -> Any:
        body = {"x": list(probe)} if probe is not None else None
        response = self.http.post(f"/v1/streams/{stream_id}/predict", json=body)
        assert response.status_code == 200, response.text
        return response.json()["prediction"]

    def state(self, stream_id: str, spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """Everything observable about a stream: its description and predictions on fixed probes."""
        return self.describe(stream_id), [self.predict(stream_id, p) for p in probes(spec)]

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = self.http.get("/metrics")
        assert response.status_code == 200, response.text
        return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    """One sample's value, or None when the server does not export it."""
    return samples.get((name, frozenset(labels.items())))


# ----- observations and the reference -----------------------------------------------------------------------


def probes(spec: Mapping[str, Any]) -> list[list[float] | None]:
    """Fixed inputs to ask a stream for predictions (ar streams forecast from their own history)."""
    model = spec["model"]
    if model["family"] == "ar":
        return [None]
    width = int(model["in_dim"])
    return [[0.5] * width, [(-1.0) ** i * (i + 1) / width for i in range(width)]]


class Feed:
    """Deterministic observations for one stream, as the wire sends them (small, well-conditioned)."""

    def __init__(self, spec: Mapping[str, Any], seed: int) -> None:
        self.model = spec["model"]
        self.rng = np.random.default_rng(seed)
        self.level = np.zeros(int(self.model.get("dim", 1)))
        if self.model["family"] != "ar":
            self.weights = self.rng.normal(size=int(self.model["in_dim"]))

    def next(self) -> dict[str, Any]:
        if self.model["family"] == "ar":
            self.level = 0.8 * self.level + self.rng.normal(scale=0.3, size=self.level.shape)
            return {"value": [float(v) for v in self.level]}
        x = self.rng.normal(size=self.weights.shape)
        y = float(np.tanh(x @ self.weights) + self.rng.normal(scale=0.05))
        return {"x": [float(v) for v in x], "y": y}

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]


class Reference:
    """Streams in an in-process CPU engine, fed observations as the wire sends them."""

    def __init__(self) -> None:
        self.engine = Engine("cpu")
        self.specs: dict[str, StreamSpec] = {}

    def add(self, stream_id: str, spec: Mapping[str, Any]) -> None:
        self.specs[stream_id] = StreamSpec.model_validate(dict(spec))
        self.engine.add(stream_id, self.specs[stream_id])

    def observe(self, stream_id: str, observations: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        results = []
        for o in observations:
            if isinstance(self.specs[stream_id].model, ARModel):
                inputs = np.asarray(o["value"], dtype=np.float64)
                results += self.engine.observe([stream_id], [inputs], [None])
            else:
                x = np.asarray(o["x"], dtype=np.float64)
                y = np.asarray([o["y"]], dtype=np.float64)
                results += self.engine.observe([stream_id], [x], [y])
        return results

    def predictions(self, stream_id: str, spec: Mapping[str, Any]) -> list[Any]:
        """What ``Api.state`` reads from ``/predict`` for the same probes (scalars for one output)."""
        out: list[Any] = []
        for probe in probes(spec):
            inputs = None if probe is None else np.asarray(probe, dtype=np.float64)
            values = self.engine.predict([stream_id], [inputs])[0]
            out.append(values[0] if values is not None and len(values) == 1 else values)
        return out

    def steps(self, stream_id: str) -> int:
        location = self.engine.locate(stream_id)
        return int(location.pool.state["opt/step"][location.slot].item())


def assert_close(served: Any, expected: Any, what: str, *, squared: bool = False) -> None:
    """Served float32 values equal the reference's up to rounding (``squared``: losses)."""
    if served is None or expected is None:
        assert served is None, f"{what}: served {served}, reference {expected}"
        assert expected is None, f"{what}: served {served}, reference {expected}"
        return
    tol = tolerance(torch.float32, ops=STEP_OPS, steps=MEMORY, scale=SCALE**2 if squared else SCALE)
    np.testing.assert_allclose(served, expected, **tol, err_msg=what)
