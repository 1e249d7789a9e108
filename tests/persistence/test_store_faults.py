"""Redis going away under traffic: refuse what cannot be made durable, keep serving what can, recover alone.

In ``log`` mode an observation is only answered once it is in the store's log, so with Redis down
ingestion answers 503 with ``Retry-After`` and applies nothing, while predictions keep coming from memory
and ``/readyz`` says the store is down. In ``checkpoint`` mode ingestion goes on (checkpoints wait). When
Redis is back everything resumes without a restart, and a crash afterwards still restores exact state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.persistence.conftest import (
    FAMILIES,
    Api,
    Backend,
    Feed,
    Reference,
    Servers,
    assert_close,
    metric,
    start_all,
)
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(150)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Traffic:
    """One client posting to one stream, one request at a time, remembering every answer."""

    server: TrackinServer
    stream: str
    spec: dict[str, Any]
    feed: Feed
    acked: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    refusals: list[httpx.Response] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as http:
            while not self.stop.is_set():
                batch = self.feed.take(2)
                response = http.post(f"/v1/streams/{self.stream}/observations", json=batch)
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.acked += batch
                else:
                    self.refusals.append(response)
                    # "Nothing applied": the same observations are sent again, as a client would.
                    self.feed = _Replay(batch, self.feed)  # type: ignore[assignment]
                    time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()

    def count(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)


class _Replay:
    """A feed that first gives back a refused batch, then continues the original feed."""

    def __init__(self, batch: list[dict[str, Any]], rest: Feed) -> None:
        self.batch = batch
        self.rest = rest

    def take(self, n: int) -> list[dict[str, Any]]:
        if self.batch:
            out, self.batch = self.batch[:n], self.batch[n:]
            return out + self.rest.take(n - len(out))
        return self.rest.take(n)


def _accepted(api: Api) -> float:
    return metric(api.metrics(), "trackin_checkpoint_writes_total", outcome="accepted") or 0.0


def _expected(traffic: Traffic) -> Reference:
    reference = Reference()
    reference.add(traffic.stream, traffic.spec)
    reference.observe(traffic.stream, traffic.acked)
    return reference


def test_redis_down_and_back_during_traffic(redis_backend: Backend, servers: Servers) -> None:
    assert redis_backend.redis is not None
    redis = redis_backend.redis
    # Two servers on one Redis, on different streams: one per durability mode.
    logged, checkpointed = servers.start_many(
        [{"TRACKIN_DURABILITY": "log"}, {"TRACKIN_DURABILITY": "checkpoint"}]
    )
    streams = {"log-linear": (logged, FAMILIES["linear"]), "log-ar": (logged, FAMILIES["ar"])}
    streams["ckpt-mlp"] = (checkpointed, FAMILIES["mlp"])
    traffic = {
        s: Traffic(server, s, spec, Feed(spec, seed=i))
        for i, (s, (server, spec)) in enumerate(streams.items())
    }
    with Api(logged) as log_api, Api(checkpointed) as ckpt_api:
        for stream_id, (server, spec) in streams.items():
            (log_api if server is logged else ckpt_api).create(stream_id, spec)
        for t in traffic.values():
            t.start()
        _wait_for(lambda: all(len(t.acked) >= 10 for t in traffic.values()), "traffic to flow")

        logs_before = {server: len(server.logs()) for server in (logged, checkpointed)}
        redis.stop()
        log_traffic = [traffic["log-linear"], traffic["log-ar"]]
        _wait_for(lambda: all(t.count(503) >= 3 for t in log_traffic), "log-mode ingestion to answer 503")
        # While Redis is down: log mode refuses and applies nothing; everything else keeps working.
        outage_acked = {s: len(t.acked) for s, t in traffic.items()}
        for t in log_traffic:
            refused = t.refusals[-1]
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "unavailable"
            reference = _expected(t)
            steps = log_api.describe(t.stream)["figures"]["steps"]
            assert steps == reference.steps(t.stream), f"{t.stream}: a refused observation was applied"
            assert_close(
                log_api.state(t.stream, t.spec)[1], reference.predictions(t.stream, t.spec), t.stream
            )
        ready = log_api.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] == "down"
        assert metric(log_api.metrics(), "trackin_store_up") == 0
        ckpt = traffic["ckpt-mlp"]
        _wait_for(
            lambda: len(ckpt.acked) >= outage_acked["ckpt-mlp"] + 10, "checkpoint mode to keep ingesting"
        )
        assert ckpt.count(503) == 0
        assert ckpt_api.http.get("/readyz").status_code == 503
        # Several failed checkpoint passes, with backoff, and no crash.
        for server, start in logs_before.items():
            _wait_for(
                lambda server=server, start=start: server.logs()[start:].count("checkpoint pass failed") >= 2,
                "two failed checkpoint passes",
            )
        assert logged.running
        assert checkpointed.running

        redis.start()
        # Back by themselves: ingestion, readiness and checkpoints, without restarting trackin.
        accepted = {name: _accepted(api) for name, api in (("log", log_api), ("ckpt", ckpt_api))}
        _wait_for(
            lambda: all(len(t.acked) >= outage_acked[t.stream] + 10 for t in log_traffic),
            "ingestion to resume",
        )
        _wait_for(lambda: log_api.http.get("/readyz").status_code == 200, "log server ready")
        _wait_for(lambda: ckpt_api.http.get("/readyz").status_code == 200, "checkpoint server ready")
        _wait_for(lambda: _accepted(log_api) > accepted["log"], "log-mode checkpoints after recovery")
        _wait_for(
            lambda: _accepted(ckpt_api) > accepted["ckpt"], "checkpoint-mode checkpoints after recovery"
        )
        for t in traffic.values():
            t.finish()
        assert metric(log_api.metrics(), "trackin_store_up") == 1
        # Let checkpoint mode write its last steps (a crash loses at most the changes since the last one).
        ckpt_state = ckpt_api.state("ckpt-mlp", FAMILIES["mlp"])
        _wait_for(lambda: redis_backend.stored_step("ckpt-mlp") == len(ckpt.acked), "final checkpoint")

        # A log append that times out may still be executed by Redis afterwards (here Redis is paused
        # mid-request). The client was told "503, nothing applied" and will send it again, so that orphan
        # must never be replayed: the server drops it from the log before the stream takes new batches.
        spec = FAMILIES["linear"]
        paused_feed = Feed(spec, seed=3)
        log_api.create("paused", spec)
        paused_acked = paused_feed.take(6)
        log_api.observe("paused", paused_acked)
        redis.pause()
        try:
            refused = log_api.http.post("/v1/streams/paused/observations", json=paused_feed.take(1))
        finally:
            redis.resume()
        assert refused.status_code == 503, refused.text
        _wait_for(
            lambda: "'paused': dropped 1 log entries" in logged.logs(), "the orphaned entry to be dropped"
        )
        assert log_api.describe("paused")["figures"]["steps"] == len(paused_acked)

    # Crash both and restart: every acknowledged observation is there, and nothing that was refused.
    logged.kill()
    checkpointed.kill()
    logged.env["TRACKIN_RESTORE_EAGERLY"] = "true"  # batched restore with log tails (lazy: test_crash)
    start_all([logged, checkpointed])
    with Api(logged) as log_api, Api(checkpointed) as ckpt_api:
        for t in log_traffic:
            reference = _expected(t)
            described, predictions = log_api.state(t.stream, t.spec)
            assert described["figures"]["steps"] == reference.steps(t.stream), t.stream
            assert_close(predictions, reference.predictions(t.stream, t.spec), t.stream)
        assert log_api.describe("paused")["figures"]["steps"] == len(paused_acked)
        assert ckpt_api.state("ckpt-mlp", FAMILIES["mlp"]) == ckpt_state
