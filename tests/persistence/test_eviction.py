"""Bounded residency: with room for 3 of 20 streams, least recently used streams are checkpointed and
dropped, and come back on their next observation; clients cannot tell, to the last bit.

The comparison is a second server with no limit and no store, fed the same requests in the same order:
every answer (step, prediction, loss) and every final state must be equal with ``==``.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from tests.persistence.conftest import FAMILIES, Api, Backend, Feed, Servers, metric, probes

pytestmark = pytest.mark.timeout(120)

STREAMS = 20
LIMIT = 3


def _without_times(state: tuple[dict[str, Any], list[Any]]) -> tuple[dict[str, Any], list[Any]]:
    described = {k: v for k, v in state[0].items() if k not in ("created_at", "updated_at")}
    return described, state[1]


def test_evicted_streams_restore_to_identical_results(backend: Backend, servers: Servers) -> None:
    limited, unlimited = servers.start_many(
        [{"TRACKIN_MAX_RESIDENT_STREAMS": str(LIMIT)}, {}], memory=[False, True]
    )
    families = list(FAMILIES.values())
    streams = {f"s{i:02d}": families[i % len(families)] for i in range(STREAMS)}
    feeds = {s: Feed(spec, seed=i) for i, (s, spec) in enumerate(streams.items())}
    rng = random.Random(7)
    with Api(limited) as api, Api(unlimited) as ref:
        for stream_id, spec in streams.items():
            api.create(stream_id, spec)
            ref.create(stream_id, spec)
        # Rounds over all streams in a fresh order each time: every request lands on a stream that was
        # most likely evicted since its last one.
        for _ in range(4):
            order = list(streams)
            rng.shuffle(order)
            for stream_id in order:
                batch = feeds[stream_id].take(rng.randint(1, 3))
                assert api.observe(stream_id, batch) == ref.observe(stream_id, batch), stream_id
            time.sleep(0.05)  # let the background loop evict between rounds too
        # One request for every stream at once: more streams than the limit, all pinned until applied.
        mixed = [{"stream": s, **feeds[s].next()} for s in streams]
        served = api.http.post("/v1/observations", json={"observations": mixed})
        expected = ref.http.post("/v1/observations", json={"observations": mixed})
        assert served.status_code == expected.status_code == 200, served.text
        assert served.json() == expected.json()
        # Reads restore too (and must not race with eviction).
        for stream_id, spec in streams.items():
            assert _without_times(api.state(stream_id, spec)) == _without_times(ref.state(stream_id, spec))

        deadline = time.monotonic() + 30
        while (resident := metric(api.metrics(), "trackin_streams_resident")) != LIMIT:
            assert time.monotonic() < deadline, f"{resident} streams resident, limit {LIMIT}"
            time.sleep(0.1)
        samples = api.metrics()
        assert metric(samples, "trackin_streams") == STREAMS
        evictions = metric(samples, "trackin_evictions_total") or 0
        restores = metric(samples, "trackin_stream_restore_duration_seconds_count") or 0
        restore_seconds = metric(samples, "trackin_stream_restore_duration_seconds_sum") or 0
        assert evictions >= STREAMS * 3, evictions
        assert restores >= evictions - (STREAMS - LIMIT), (restores, evictions)
        assert restore_seconds > 0
        listed = api.http.get("/v1/streams", params={"limit": 100}).json()["streams"]
        assert listed == sorted(streams)
        steps = {s: api.describe(s)["figures"]["steps"] for s in streams}

    # Concurrent clients on streams that keep being evicted and restored: two requests may restore one
    # stream at once, or find it half-evicted. Every request must succeed, and every step must count.
    applied: dict[str, int] = dict.fromkeys(streams, 0)
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        r = random.Random(seed)
        with Api(limited) as own:
            for _ in range(60):
                stream_id = r.choice(list(streams))
                kind = r.random()
                if kind < 0.4:
                    response = own.http.get(f"/v1/streams/{stream_id}")
                elif kind < 0.6 or streams[stream_id]["model"]["family"] == "ar":
                    probe = probes(streams[stream_id])[0]
                    response = own.http.post(f"/v1/streams/{stream_id}/predict", json=probe and {"x": probe})
                else:
                    observation = Feed(streams[stream_id], seed=r.randrange(1000)).next()
                    response = own.http.post(f"/v1/streams/{stream_id}/observations", json=observation)
                    if response.status_code == 200:
                        with lock:
                            applied[stream_id] += 1
                if response.status_code != 200:
                    failures.append(f"{stream_id}: {response.status_code} {response.text}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures[:5]
    with Api(limited) as api:
        for stream_id in streams:
            if streams[stream_id]["model"]["family"] != "ar":
                assert api.describe(stream_id)["figures"]["steps"] == steps[stream_id] + applied[stream_id]
