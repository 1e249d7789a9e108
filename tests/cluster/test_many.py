"""``POST /v1/observations`` in cluster mode: a request naming streams of many partitions is checked as a
whole by their owners (nothing applied on a bad item, the item named by its index in the request), then
logged per partition, and answered in request order; equal to a single node fed the same observations."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.cluster import Cluster, Load, bearer, check_against_reference, create_streams, partition

pytestmark = pytest.mark.slow


def test_many_streams_in_one_request_through_any_replica(cluster: Cluster) -> None:
    streams = create_streams(cluster, "many", 12)
    assert len({partition(s) for s in streams}) > 3  # the requests span several partitions
    load, rng = Load(streams, seed=6, headers=cluster.headers), random.Random(6)
    urls = [r.url for r in cluster.live()]
    with httpx.Client(timeout=30, headers=cluster.headers) as http:
        for _ in range(3):
            named = streams + streams  # each stream twice in one request, in a shuffled order
            rng.shuffle(named)
            items = [{"stream": s, **load.observation()} for s in named]
            answer = http.post(f"{rng.choice(urls)}/v1/observations", json={"observations": items})
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            assert [r["stream"] for r in results] == named
            for item, result in zip(items, results, strict=True):
                log = load.logs[item["stream"]]
                log.answers.append((len(log.acked), result))
                log.acked.append({"x": item["x"], "y": item["y"]})
        steps = {s: len(load.logs[s].acked) for s in streams}
        # A bad item anywhere refuses the whole request, named by its index, whichever owner checked it.
        good = [{"stream": s, **load.observation()} for s in streams]
        for k, bad, field, status in (
            (7, {"stream": streams[7], "x": [1.0], "y": 0.0}, "observations[7].x", 422),
            (5, {"stream": "many-nope", "x": [0, 0, 0], "y": 0.0}, None, 404),
            (3, {"x": [0, 0, 0], "y": 0.0}, "observations[3].stream", 422),
        ):
            body = {"observations": [*good[:k], bad, *good[k + 1 :]]}
            refused = http.post(f"{rng.choice(urls)}/v1/observations", json=body)
            assert refused.status_code == status, refused.text
            if field is not None:
                assert refused.json()["error"]["field"].startswith(field), refused.text
        assert http.post(f"{urls[0]}/v1/observations", json=[]).status_code == 422
    check_against_reference(cluster, load)  # nothing of the refused requests was applied
    assert {s: len(load.logs[s].acked) for s in streams} == steps


def test_many_streams_stay_in_the_callers_namespace(cluster: Cluster) -> None:
    alpha, beta = bearer(cluster.keys["alpha"]), bearer(cluster.keys["beta"])
    one, two = (r.url for r in cluster.live()[:2])
    spec = {"model": {"family": "linear", "in_dim": 2}}
    with httpx.Client(timeout=10) as http:
        for name in ("m1", "m2"):
            assert http.put(f"{one}/v1/streams/{name}", json=spec, headers=alpha).status_code == 201
        items = [{"stream": s, "x": [0.5, -0.5], "y": 1.0} for s in ("m1", "m2", "m1")]
        answer = http.post(f"{two}/v1/observations", json=items, headers=alpha)
        assert answer.status_code == 200, answer.text
        steps = [(r["stream"], r["step"]) for r in answer.json()["results"]]
        assert steps == [("m1", 1), ("m2", 1), ("m1", 2)]
        assert http.post(f"{two}/v1/observations", json=items, headers=beta).status_code == 404
        sneaky = [{"stream": "~alpha/m1", "x": [0.5, -0.5], "y": 1.0}]
        assert http.post(f"{one}/v1/observations", json=sneaky, headers=beta).status_code == 422
        assert http.get(f"{one}/v1/streams/m1", headers=alpha).json()["figures"]["steps"] == 2
