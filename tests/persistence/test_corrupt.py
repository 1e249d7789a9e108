"""A corrupt or truncated checkpoint is reported for its stream, never replaced by a fresh model.

The server keeps one stream resident, so the others live only in the store; the test then overwrites
stored tensors bytes behind trackin's back (garbage of the same length, and a valid blob cut in half).
Every use of a damaged stream must answer 500 ``corrupt_checkpoint`` naming it, leave the stored bytes
alone (an operator may still rescue them), and leave every other stream working. Replacing or deleting a
damaged stream is the operator's explicit decision (``?replace=true``, ``DELETE``), and works.
"""

from __future__ import annotations

import random
import time

import httpx
import pytest

from tests.persistence.conftest import FAMILIES, Api, Backend, Feed, Servers, metric

pytestmark = pytest.mark.timeout(90)

STREAMS = {"bad-garbage": FAMILIES["linear"], "bad-cut": FAMILIES["mlp"], "ok-ar": FAMILIES["ar"]}
STREAMS["ok-linear"] = FAMILIES["linear"]


def _assert_corrupt(response: httpx.Response, stream_id: str) -> None:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "corrupt_checkpoint", error
    assert error["stream"] == stream_id, error
    assert stream_id in error["message"], error


def test_corrupt_checkpoints_are_reported_not_replaced(backend: Backend, servers: Servers) -> None:
    server = servers.start({"TRACKIN_MAX_RESIDENT_STREAMS": "1"})
    with Api(server) as api:
        for i, (stream_id, spec) in enumerate(STREAMS.items()):
            api.create(stream_id, spec)
            api.observe(stream_id, Feed(spec, seed=i).take(12))
        before = {s: api.state(s, spec) for s, spec in STREAMS.items()}
        api.observe("ok-linear", Feed(STREAMS["ok-linear"], seed=50).take(1))  # the one left resident
        before["ok-linear"] = api.state("ok-linear", STREAMS["ok-linear"])
        deadline = time.monotonic() + 30
        while metric(api.metrics(), "trackin_streams_resident") != 1:
            assert time.monotonic() < deadline, "eviction down to one resident stream"
            time.sleep(0.05)

        garbage = random.Random(0).randbytes(len(backend.raw_tensors("bad-garbage")))
        cut = backend.raw_tensors("bad-cut")[: len(backend.raw_tensors("bad-cut")) // 2]
        backend.overwrite_tensors("bad-garbage", garbage)
        backend.overwrite_tensors("bad-cut", cut)

        spec = STREAMS["bad-garbage"]
        _assert_corrupt(api.http.get("/v1/streams/bad-garbage"), "bad-garbage")
        _assert_corrupt(
            api.http.post("/v1/streams/bad-garbage/predict", json={"x": [0, 0, 0]}), "bad-garbage"
        )
        _assert_corrupt(
            api.http.post("/v1/streams/bad-cut/observations", json=Feed(spec, 1).take(1)), "bad-cut"
        )
        # Asking again (a retrying client) gives the same answer: nothing was quietly created meanwhile.
        _assert_corrupt(api.http.get("/v1/streams/bad-cut"), "bad-cut")
        # Creating it again without saying "replace" must not paper over the damage either.
        _assert_corrupt(api.http.put("/v1/streams/bad-garbage", json=spec), "bad-garbage")
        # A multi-stream request naming a damaged stream is refused whole, naming it.
        mixed = {
            "observations": [
                {"stream": "ok-ar", "value": [0.1, 0.2]},
                {"stream": "bad-cut", **Feed(FAMILIES["mlp"], 2).next()},
            ]
        }
        _assert_corrupt(api.http.post("/v1/observations", json=mixed), "bad-cut")

        assert backend.raw_tensors("bad-garbage") == garbage
        assert backend.raw_tensors("bad-cut") == cut
        # Every other stream is untouched: the resident one, and the stored ones restore as they were.
        for stream_id in ("ok-linear", "ok-ar"):
            assert api.state(stream_id, STREAMS[stream_id]) == before[stream_id]
        listed = api.http.get("/v1/streams").json()["streams"]
        assert listed == sorted(STREAMS)

        # The operator's way out: delete one, replace the other; both then behave as new streams.
        assert api.http.delete("/v1/streams/bad-garbage").status_code == 204
        assert api.http.get("/v1/streams/bad-garbage").status_code == 404
        replaced = api.http.put("/v1/streams/bad-cut", params={"replace": "true"}, json=FAMILIES["mlp"])
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["outcome"] == "replaced"
        assert replaced.json()["figures"]["steps"] == 0
        assert api.observe("bad-cut", Feed(FAMILIES["mlp"], seed=9).take(2))[-1]["step"] == 2
