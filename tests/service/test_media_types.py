"""Content types of observation bodies: JSON and MessagePack read alike; the answer names its request id."""

from __future__ import annotations

import httpx
import msgpack
import pytest

from tests.service import LINEAR, create, unique

pytestmark = pytest.mark.timeout(60)

_ROWS = [{"x": [0.1, 0.2, 0.3], "y": 1.5}, {"x": [0.2, 0.1, 0.0], "y": 1.1}]


@pytest.mark.parametrize("path", ["/v1/streams/{sid}/observations", "/v1/observations"])
def test_msgpack_body_is_read_as_its_json_twin(http: httpx.Client, path: str) -> None:
    """The same rows, once as MessagePack and once as JSON, on two fresh streams: the same answers."""
    answers = []
    for kind in ("application/msgpack", "application/json; charset=utf-8"):
        sid = unique("media")
        create(http, sid, LINEAR)
        rows = _ROWS if "{sid}" in path else {"observations": [{"stream": sid, **r} for r in _ROWS]}
        body = msgpack.packb(rows) if "msgpack" in kind else httpx.Request("POST", "/", json=rows).content
        response = http.post(path.format(sid=sid), content=body, headers={"content-type": kind})
        assert response.status_code == 200, response.text
        answers.append([{k: v for k, v in r.items() if k != "stream"} for r in response.json()["results"]])
    assert answers[0] == answers[1]


def test_msgpack_label_after_a_prediction(http: httpx.Client) -> None:
    sid = unique("media")
    create(http, sid, LINEAR)
    packed = {"content-type": "application/msgpack"}
    question = msgpack.packb({"x": [1, 2, 3], "request_id": "r1"})
    predicted = http.post(f"/v1/streams/{sid}/predict", content=question, headers=packed)
    assert predicted.status_code == 200, predicted.text
    labelled = http.post(
        f"/v1/streams/{sid}/labels", content=msgpack.packb({"request_id": "r1", "y": 2.0}), headers=packed
    )
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["step"] == 1


def test_request_id_is_echoed_or_made(http: httpx.Client) -> None:
    mine = http.get("/healthz", headers={"x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    made = http.get("/v1/streams/unknown-x")
    assert len(made.headers["x-request-id"]) >= 16
    unsafe = http.get("/healthz", headers={"x-request-id": "a b\tc"})
    assert unsafe.headers["x-request-id"] != "a b\tc"
