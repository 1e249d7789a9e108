"""A graceful restart (SIGTERM, start again) keeps every stream exactly as it was.

Nothing is recomputed on the way: the restored parameters are the bytes the engine held, so descriptions
(figures, times) and predictions on fixed probes compare with ``==``, not a tolerance. Two deployments run
side by side, each on its own store of the test's backend: ``log`` durability restored eagerly at start,
``checkpoint`` durability restored lazily on first use.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.persistence.conftest import (
    FAMILIES,
    LINEAR,
    NO_BACKGROUND_CHECKPOINTS,
    Api,
    Backend,
    Feed,
    Reference,
    Servers,
    assert_close,
    metric,
    start_all,
    stop_all,
)
from tests.support.server import TrackinServer
from trackin.service.store import SQLITE_FILENAME

pytestmark = pytest.mark.timeout(90)

STREAMS = {f"{family}-{i}": spec for family, spec in FAMILIES.items() for i in range(2)}


def _feed(api: Api, feeds: dict[str, Feed], reference: Reference) -> None:
    for n, (stream_id, spec) in enumerate(STREAMS.items()):
        api.create(stream_id, spec)
        reference.add(stream_id, spec)
        for _ in range(3):
            batch = feeds[stream_id].take(5 + n)
            api.observe(stream_id, batch)
            reference.observe(stream_id, batch)
    # One request for all streams too (the multi-stream endpoint), applied in order.
    mixed = [{"stream": s, **feeds[s].next()} for s in STREAMS]
    assert api.http.post("/v1/observations", json={"observations": mixed}).status_code == 200
    for item in mixed:
        reference.observe(item["stream"], [{k: v for k, v in item.items() if k != "stream"}])


def test_sigterm_restart_keeps_every_stream_identical(backend: Backend, servers: Servers) -> None:
    # No background checkpoints: only the SIGTERM flush can save the last steps, so in checkpoint mode a
    # shutdown that forgets it fails here (in log mode replay would hide it; the flush trims the log).
    deployments: dict[str, TrackinServer] = {
        "log": servers.make({"TRACKIN_DURABILITY": "log", **NO_BACKGROUND_CHECKPOINTS}),
        "checkpoint": servers.make(
            {"TRACKIN_DURABILITY": "checkpoint", **NO_BACKGROUND_CHECKPOINTS}, backend=backend.spawn()
        ),
    }
    start_all(list(deployments.values()))
    feeds = {
        mode: {s: Feed(spec, seed=n) for n, (s, spec) in enumerate(STREAMS.items())} for mode in deployments
    }
    references = {mode: Reference() for mode in deployments}
    before: dict[str, dict[str, Any]] = {}
    for mode, server in deployments.items():
        with Api(server) as api:
            _feed(api, feeds[mode], references[mode])
            before[mode] = {s: api.state(s, spec) for s, spec in STREAMS.items()}
            assert all(b[0]["figures"]["steps"] > 0 for b in before[mode].values())

    assert stop_all(list(deployments.values())) == [0, 0]
    deployments["log"].env["TRACKIN_RESTORE_EAGERLY"] = "true"
    start_all(list(deployments.values()))

    for mode, server in deployments.items():
        with Api(server) as api:
            if mode == "log":  # restored at start, before any request
                assert metric(api.metrics(), "trackin_stream_restore_duration_seconds_count") == len(STREAMS)
            after = {s: api.state(s, spec) for s, spec in STREAMS.items()}
            listed = api.http.get("/v1/streams", params={"limit": 100}).json()["streams"]
            samples = api.metrics()
            for stream_id in STREAMS:
                assert after[stream_id] == before[mode][stream_id], (mode, stream_id)
            assert listed == sorted(STREAMS)
            # Every stream came back from the store, once, and the log had nothing left to replay.
            assert metric(samples, "trackin_stream_restore_duration_seconds_count") == len(STREAMS)
            assert not metric(samples, "trackin_observations_total", outcome="applied", transport="log")

            # And they go on learning as if never stopped: momentum, error feedback, lag windows came back.
            reference = references[mode]
            for stream_id, spec in STREAMS.items():
                batch = feeds[mode][stream_id].take(4)
                served = api.observe(stream_id, batch)
                expected = reference.observe(stream_id, batch)
                for got, want in zip(served, expected, strict=True):
                    assert got["step"] == want.step, (mode, stream_id, got)
                    assert_close(got["prediction"], want.prediction, f"{mode} {stream_id} prediction")
                    assert_close(got["loss"], want.loss, f"{mode} {stream_id} loss", squared=True)
                assert_close(api.state(stream_id, spec)[1], reference.predictions(stream_id, spec), stream_id)


@contextlib.contextmanager
def _store_down(backend: Backend) -> Iterator[None]:
    """The store refuses service: Redis stopped, or the SQLite file write-locked by another connection."""
    if backend.redis is not None:
        backend.redis.stop()
        try:
            yield
        finally:
            backend.redis.start()
        return
    db = sqlite3.connect(backend.store_dir / SQLITE_FILENAME, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def test_eager_restore_after_a_store_outage_at_start_is_ready_only_when_done(
    backend: Backend, servers: Servers
) -> None:
    """The store is down when a server that restores eagerly starts: it retries in the background, and
    /readyz stays 503 until every stored stream is back, not merely until the store answers again (a
    client told "ready" must find the streams loaded, and restore metrics complete)."""
    env = {"TRACKIN_DURABILITY": "checkpoint", **NO_BACKGROUND_CHECKPOINTS}
    first = servers.start(env)
    n = 80
    with Api(first) as api:
        for k in range(n):
            api.create(f"s{k:03d}", LINEAR)
            api.observe(f"s{k:03d}", Feed(LINEAR, seed=k).take(2))
    assert first.stop() == 0  # SIGTERM writes every stream

    second = servers.make({**env, "TRACKIN_RESTORE_EAGERLY": "true"})
    with ThreadPoolExecutor(1) as pool:
        with _store_down(backend):
            starting = pool.submit(second.start)  # returns once /readyz says 200
            deadline = time.monotonic() + 60
            while "store unavailable at start" not in second.logs():
                assert time.monotonic() < deadline, second.describe()
                assert not starting.done(), "ready while the store was down"
                time.sleep(0.05)
        starting.result(timeout=120)
    with Api(second) as api:
        samples = api.metrics()
        assert metric(samples, "trackin_stream_restore_duration_seconds_count") == n
        assert api.http.get("/readyz").json()["checks"] == {"engine": "up", "store": "up"}
        assert api.describe("s079")["figures"]["steps"] == 2
