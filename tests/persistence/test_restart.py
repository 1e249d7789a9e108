"""A graceful restart (SIGTERM, start again) keeps every stream exactly as it was.

Nothing is recomputed on the way: the restored parameters are the bytes the engine held, so descriptions
(figures, times) and predictions on fixed probes compare with ``==``, not a tolerance.
"""

from __future__ import annotations

import pytest

from tests.persistence.conftest import (
    FAMILIES,
    NO_BACKGROUND_CHECKPOINTS,
    Api,
    Backend,
    Feed,
    Reference,
    Servers,
    assert_close,
    metric,
)

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("durability", ["log", "checkpoint"])
def test_sigterm_restart_keeps_every_stream_identical(
    backend: Backend, servers: Servers, durability: str
) -> None:
    # No background checkpoints: in checkpoint mode only the SIGTERM flush can save the last steps, so a
    # shutdown that forgets it fails here; in log mode the flush makes the log empty (all trimmed).
    server = servers.start({"TRACKIN_DURABILITY": durability, **NO_BACKGROUND_CHECKPOINTS})
    streams = {f"{family}-{i}": spec for family, spec in FAMILIES.items() for i in range(2)}
    feeds = {s: Feed(spec, seed=n) for n, (s, spec) in enumerate(streams.items())}
    reference = Reference()
    with Api(server) as api:
        for n, (stream_id, spec) in enumerate(streams.items()):
            api.create(stream_id, spec)
            reference.add(stream_id, spec)
            for _ in range(3):
                batch = feeds[stream_id].take(5 + n)
                api.observe(stream_id, batch)
                reference.observe(stream_id, batch)
        # One request for all streams too (the multi-stream endpoint), applied in order.
        mixed = [{"stream": s, **feeds[s].next()} for s in streams]
        assert api.http.post("/v1/observations", json={"observations": mixed}).status_code == 200
        for item in mixed:
            reference.observe(item["stream"], [{k: v for k, v in item.items() if k != "stream"}])
        before = {s: api.state(s, spec) for s, spec in streams.items()}
        assert all(b[0]["figures"]["steps"] > 0 for b in before.values())

    assert server.stop() == 0
    server.start()
    with Api(server) as api:
        after = {s: api.state(s, spec) for s, spec in streams.items()}
        listed = api.http.get("/v1/streams", params={"limit": 100}).json()["streams"]
        samples = api.metrics()

    for stream_id in streams:
        assert after[stream_id] == before[stream_id], stream_id
    assert sorted(listed) == sorted(streams)
    # Every stream came back from the store (lazily, on first use), not from anywhere else.
    assert metric(samples, "trackin_stream_restore_duration_seconds_count") == len(streams)
    if durability == "log":
        assert not metric(samples, "trackin_observations_total", outcome="applied", transport="log")

    # And they go on learning as if never stopped: momentum, error feedback and lag windows all came back.
    with Api(server) as api:
        for stream_id, spec in streams.items():
            batch = feeds[stream_id].take(4)
            served = api.observe(stream_id, batch)
            expected = reference.observe(stream_id, batch)
            for got, want in zip(served, expected, strict=True):
                assert got["step"] == want.step, (stream_id, got)
                assert_close(got["prediction"], want.prediction, f"{stream_id} prediction")
                assert_close(got["loss"], want.loss, f"{stream_id} loss")
            assert_close(api.state(stream_id, spec)[1], reference.predictions(stream_id, spec), stream_id)
