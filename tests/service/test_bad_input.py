"""Every rejected request: the right 4xx, the one error shape naming field and stream, and no change.

"No change" is checked from outside, as a client would: every stream's description (spec, step count,
loss figures, times) and a prediction from its parameters are the same before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.service import AR, LINEAR, assert_error, create, state_of, unique

pytestmark = pytest.mark.timeout(60)

SPECS: dict[str, dict[str, Any]] = {
    "$LIN": LINEAR,
    "$OUT2": {"model": {"family": "linear", "in_dim": 3, "out_dim": 2, "init": "random"}},
    "$AR": AR,
    "$BCE": {"model": {"family": "linear", "in_dim": 3}, "loss": "bce"},
}
WARMUP: dict[str, list[dict[str, Any]]] = {
    "$LIN": [{"x": [1, 2, 3], "y": 2.0}, {"x": [0, -1, 0.5], "y": -1.0}],
    "$OUT2": [{"x": [1, 2, 3], "y": [2.0, 1.0]}],
    "$AR": [{"value": [i, -2 * i]} for i in range(6)],
    "$BCE": [{"x": [1, 2, 3], "y": 1.0}],
}
PROBES: dict[str, list[float] | None] = {
    "$LIN": [0.5, -1, 2],
    "$OUT2": [1, 1, 1],
    "$AR": None,
    "$BCE": [1, 0, 0],
}


@dataclass(frozen=True)
class Streams:
    ids: dict[str, str]  # placeholder -> stream id (with "$NEW": an id no stream has)

    def fill(self, value: Any) -> Any:
        """Placeholders replaced by this test's stream ids, in paths, JSON values and raw bodies."""
        if isinstance(value, str):
            for key, sid in self.ids.items():
                value = value.replace(key, sid)
            return value
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value

    def state(self, http: httpx.Client) -> dict[str, Any]:
        return {key: state_of(http, self.ids[key], PROBES[key]) for key in SPECS}


def make_streams(http: httpx.Client) -> Streams:
    ids = {key: unique(key[1:].lower()) for key in SPECS}
    for key, spec in SPECS.items():
        create(http, ids[key], spec)
        response = http.post(f"/v1/streams/{ids[key]}/observations", json=WARMUP[key])
        assert response.status_code == 200, response.text
    return Streams({**ids, "$NEW": unique("new")})


@pytest.fixture
def streams(http: httpx.Client) -> Streams:
    return make_streams(http)


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: Any  # JSON value, or str/bytes sent verbatim
    status: int
    code: str
    field: str | None
    stream: str | None  # a placeholder, or None
    method: str = "POST"
    content_type: str | None = "application/json"  # for a body sent verbatim; None: no header

    def send(self, http: httpx.Client, streams: Streams) -> httpx.Response:
        path = streams.fill(self.path)
        if isinstance(self.body, str | bytes):
            content = streams.fill(self.body) if isinstance(self.body, str) else self.body
            headers = {"content-type": self.content_type} if self.content_type is not None else {}
            return http.request(self.method, path, content=content, headers=headers)
        return http.request(self.method, path, json=streams.fill(self.body))


OBS = "/v1/streams/$LIN/observations"
GOOD = {"x": [1, 2, 3], "y": 1.0}
_JSON = {"content-type": "application/json"}
BAD_ID = "has space"
LONG_ID = "a" * 129


def _obs(
    case_id: str,
    body: Any,
    field: str | None,
    stream: str | None = "$LIN",
    *,
    path: str = OBS,
    status: int = 422,
    code: str = "invalid_input",
) -> Case:
    """An observation request that must be refused (on $LIN unless told)."""
    return Case(case_id, path, body, status, code, field, stream)


_MEDIA_BODIES = {
    "/observations": '{"x": [1, 2, 3], "y": 1.0}',
    "/v1/observations": '{"observations": [{"stream": "$LIN", "x": [1, 2, 3], "y": 1.0}]}',
    "/predict": '{"x": [1, 2, 3]}',
    "/labels": '{"request_id": "r", "y": 1.0}',
}


def _media(case_id: str, path: str, content_type: str | None, stream: str | None = "$LIN") -> Case:
    """A well-formed JSON body sent without a content type the endpoint reads: 415 before parsing (a web
    page's cross-origin form or text post must not write)."""
    longest_first = sorted(_MEDIA_BODIES.items(), key=lambda kv: -len(kv[0]))
    body = next(b for end, b in longest_first if path.endswith(end))
    return Case(
        case_id, path, body, 415, "unsupported_media_type", "content-type", stream, content_type=content_type
    )


MEDIA_CASES = [
    _media("obs-text-plain", OBS, "text/plain"),
    _media("obs-form", OBS, "application/x-www-form-urlencoded"),
    _media("obs-no-content-type", OBS, None),
    _media("obs-multipart", OBS, "multipart/form-data; boundary=x"),
    _media("many-text-plain", "/v1/observations", "text/plain", None),
    _media("many-no-content-type", "/v1/observations", None, None),
    _media("predict-text-plain", "/v1/streams/$LIN/predict", "text/plain"),
    _media("labels-form", "/v1/streams/$LIN/labels", "application/x-www-form-urlencoded"),
    _media("labels-no-content-type", "/v1/streams/$LIN/labels", None),
]


CASES = [
    *MEDIA_CASES,
    # Wrong dimensions for the stream's spec.
    _obs("x-too-short", {"x": [1, 2], "y": 1.0}, "observations[0].x"),
    _obs("x-too-long-in-list", [GOOD, {"x": [1, 2, 3, 4], "y": 1.0}], "observations[1].x"),
    _obs("y-too-long", {"x": [1, 2, 3], "y": [1.0, 2.0]}, "observations[0].y"),
    _obs(
        "y-too-short",
        {"x": [1, 2, 3], "y": 1.0},
        "observations[0].y",
        "$OUT2",
        path="/v1/streams/$OUT2/observations",
    ),
    _obs("x-empty", {"x": [], "y": 1.0}, "observations[0].x"),
    _obs("value-on-linear", {"value": [1.0]}, "observations[0].value"),
    _obs("missing-y", {"x": [1, 2, 3]}, "observations[0].y"),
    _obs("missing-x", {"y": 1.0}, "observations[0].x"),
    _obs(
        "ar-value-too-short",
        {"value": [1.0]},
        "observations[0].value",
        "$AR",
        path="/v1/streams/$AR/observations",
    ),
    _obs(
        "ar-x-and-y",
        {"x": [1.0, 2.0], "y": 1.0},
        "observations[0].value",
        "$AR",
        path="/v1/streams/$AR/observations",
    ),
    _obs(
        "ar-value-and-x",
        {"value": [1.0, 2.0], "x": [1.0]},
        "observations[0].x",
        "$AR",
        path="/v1/streams/$AR/observations",
    ),
    _obs(
        "bce-target-out-of-range",
        {"x": [1, 2, 3], "y": 1.5},
        "observations[0].y",
        "$BCE",
        path="/v1/streams/$BCE/observations",
    ),
    # Infinite and NaN numbers, however spelled.
    _obs("x-1e999", '{"x": [1, 1e999, 3], "y": 1}', "observations[0].x[1]"),
    _obs(
        "y-minus-1e999-in-list",
        '[{"x": [1, 2, 3], "y": 1}, {"x": [1, 2, 3], "y": -1e999}]',
        "observations[1].y",
    ),
    _obs(
        "ar-value-1e999",
        '{"value": [1, 1e999]}',
        "observations[0].value[1]",
        "$AR",
        path="/v1/streams/$AR/observations",
    ),
    _obs("x-string-NaN", {"x": [1, "NaN", 3], "y": 1.0}, "observations[0].x[1]"),
    _obs("y-string-Infinity", {"x": [1, 2, 3], "y": "Infinity"}, "observations[0].y"),
    _obs("x-bare-NaN-token", '{"x": [1, NaN, 3], "y": 1}', "body"),
    _obs("y-bare-Infinity-token", '{"x": [1, 2, 3], "y": -Infinity}', "body"),
    _obs("ts-1e999", '{"x": [1, 2, 3], "y": 1, "ts": 1e999}', "observations[0].ts"),
    # Other types where numbers belong.
    _obs("x-bool", {"x": [True, 2, 3], "y": 1.0}, "observations[0].x[0]"),
    _obs("y-bool", {"x": [1, 2, 3], "y": False}, "observations[0].y"),
    _obs("x-numeric-string", {"x": ["1", 2, 3], "y": 1.0}, "observations[0].x[0]"),
    _obs("x-null-item", {"x": [None, 2, 3], "y": 1.0}, "observations[0].x[0]"),
    _obs("x-object", {"x": {"a": 1}, "y": 1.0}, "observations[0].x"),
    # Unknown fields, shapes that are not observations, the wrong stream.
    _obs("unknown-field", {"x": [1, 2, 3], "y": 1.0, "weight": 2}, "observations[0].weight"),
    _obs("third-item-bad", [GOOD, GOOD, {"x": [1, 2], "y": 1.0}, GOOD], "observations[2].x"),
    _obs("empty-list", [], "observations"),
    _obs("not-json", "hello", "body"),
    _obs("empty-body", "", "body"),
    _obs("number-body", "5", "observations[0]"),
    _obs("other-stream-in-item", {**GOOD, "stream": "$OUT2"}, "observations[0].stream", "$OUT2"),
    # Unknown and invalid stream ids.
    _obs(
        "unknown-stream",
        GOOD,
        None,
        "$NEW",
        path="/v1/streams/$NEW/observations",
        status=404,
        code="unknown_stream",
    ),
    _obs(
        "id-charset",
        GOOD,
        "stream_id",
        None,
        path=f"/v1/streams/{BAD_ID}/observations",
        code="invalid_stream_id",
    ),
    _obs(
        "id-unicode",
        GOOD,
        "stream_id",
        None,
        path="/v1/streams/caf\u00e9/observations",
        code="invalid_stream_id",
    ),
    _obs(
        "id-too-long",
        GOOD,
        "stream_id",
        None,
        path=f"/v1/streams/{LONG_ID}/observations",
        code="invalid_stream_id",
    ),
    # Many streams in one request: one bad item rejects all.
    _obs(
        "many-one-bad-dim",
        {
            "observations": [
                {**GOOD, "stream": "$LIN"},
                {"stream": "$AR", "value": [1, 2]},
                {"stream": "$OUT2", "x": [1, 2, 3], "y": [1.0]},
                {**GOOD, "stream": "$BCE"},
            ]
        },
        "observations[2].y",
        "$OUT2",
        path="/v1/observations",
    ),
    _obs(
        "many-one-unknown-stream",
        [{**GOOD, "stream": "$LIN"}, {**GOOD, "stream": "$NEW"}, {"stream": "$AR", "value": [1, 2]}],
        None,
        "$NEW",
        path="/v1/observations",
        status=404,
        code="unknown_stream",
    ),
    _obs(
        "many-dot-segment-id",  # "." and ".." are URL dot-segments, never stream ids
        [{**GOOD, "stream": "$LIN"}, {**GOOD, "stream": ".."}],
        "observations[1].stream",
        None,
        path="/v1/observations",
        code="invalid_stream_id",
    ),
    _obs(
        "many-one-bool",
        {"observations": [{**GOOD, "stream": "$LIN"}, {"stream": "$BCE", "x": [1, False, 3], "y": 1}]},
        "observations[1].x[1]",
        "$BCE",
        path="/v1/observations",
    ),
    _obs(
        "many-one-1e999",
        '{"observations": [{"stream": "$AR", "value": [1, 2]}, {"stream": "$LIN", "x": [1, 2, 1e999], '
        '"y": 1}]}',
        "observations[1].x[2]",
        None,
        path="/v1/observations",
    ),
    _obs(
        "many-missing-stream",
        [{**GOOD, "stream": "$LIN"}, GOOD],
        "observations[1].stream",
        None,
        path="/v1/observations",
    ),
    _obs(
        "many-invalid-stream-id",
        [{**GOOD, "stream": "$LIN"}, {**GOOD, "stream": BAD_ID}],
        "observations[1].stream",
        None,
        path="/v1/observations",
        code="invalid_stream_id",
    ),
    _obs(
        "many-unknown-top-level-field",
        {"observations": [{**GOOD, "stream": "$LIN"}], "extra": 1},
        "extra",
        None,
        path="/v1/observations",
    ),
    _obs("many-missing-observations", {}, "observations", None, path="/v1/observations"),
    _obs("many-empty", {"observations": []}, "observations", None, path="/v1/observations"),
    # Predictions and labels.
    Case("predict-x-dim", "/v1/streams/$LIN/predict", {"x": [1, 2]}, 422, "invalid_input", "x", "$LIN"),
    Case(
        "predict-x-NaN",
        "/v1/streams/$LIN/predict",
        {"x": [1, "NaN", 3]},
        422,
        "invalid_input",
        "x[1]",
        "$LIN",
    ),
    Case(
        "predict-x-1e999",
        "/v1/streams/$LIN/predict",
        '{"x": [1e999, 1, 3]}',
        422,
        "invalid_input",
        "x[0]",
        "$LIN",
    ),
    Case("predict-missing-x", "/v1/streams/$LIN/predict", {}, 422, "invalid_input", "x", "$LIN"),
    Case("predict-ar-with-x", "/v1/streams/$AR/predict", {"x": [1.0]}, 422, "invalid_input", "x", "$AR"),
    Case(
        "predict-unknown-field",
        "/v1/streams/$LIN/predict",
        {"x": [1, 2, 3], "k": 1},
        422,
        "invalid_input",
        "k",
        "$LIN",
    ),
    Case(
        "predict-unknown-stream",
        "/v1/streams/$NEW/predict",
        {"x": [1, 2, 3]},
        404,
        "unknown_stream",
        None,
        "$NEW",
    ),
    Case(
        "predict-invalid-id",
        f"/v1/streams/{LONG_ID}/predict",
        {"x": [1, 2, 3]},
        422,
        "invalid_stream_id",
        "stream_id",
        None,
    ),
    Case(
        "label-unknown-request",
        "/v1/streams/$LIN/labels",
        {"request_id": "never", "y": 1.0},
        404,
        "unknown_request",
        "request_id",
        "$LIN",
    ),
    Case(
        "predict-request-id-too-long",  # kept with the inputs until the label comes: bounded
        "/v1/streams/$LIN/predict",
        {"x": [1, 2, 3], "request_id": "r" * 257},
        422,
        "invalid_input",
        "request_id",
        "$LIN",
    ),
    Case(
        "label-request-id-empty",
        "/v1/streams/$LIN/labels",
        {"request_id": "", "y": 1.0},
        422,
        "invalid_input",
        "request_id",
        "$LIN",
    ),
    Case(
        "label-missing-y", "/v1/streams/$LIN/labels", {"request_id": "r"}, 422, "invalid_input", "y", "$LIN"
    ),
    Case(
        "label-y-NaN",
        "/v1/streams/$LIN/labels",
        {"request_id": "r", "y": "NaN"},
        422,
        "invalid_input",
        "y",
        "$LIN",
    ),
    # Invalid specs (the stream stays as it was; ?replace=true does not help an invalid spec).
    *(
        Case(
            f"spec-{name}",
            "/v1/streams/$LIN?replace=true",
            body,
            422,
            "invalid_input",
            field,
            "$LIN",
            method="PUT",
        )
        for name, body, field in [
            ("lr-zero", {**LINEAR, "optimizer": {"name": "trackin", "lr": 0}}, "optimizer.trackin.lr"),
            ("lr-negative", {**LINEAR, "optimizer": {"name": "sgd", "lr": -0.1}}, "optimizer.sgd.lr"),
            ("gamma-one", {**LINEAR, "optimizer": {"gamma": 1.0}}, "optimizer.trackin.gamma"),
            ("adam-beta2", {**LINEAR, "optimizer": {"name": "adam", "beta2": 1.0}}, "optimizer.adam.beta2"),
            ("unknown-optimizer", {**LINEAR, "optimizer": {"name": "rmsprop"}}, "optimizer"),
            ("unknown-family", {"model": {"family": "tree", "in_dim": 3}}, "model"),
            ("in-dim-zero", {"model": {"family": "linear", "in_dim": 0}}, "model.linear.in_dim"),
            ("in-dim-huge", {"model": {"family": "linear", "in_dim": 10**6}}, "model.linear.in_dim"),
            ("unknown-spec-field", {**LINEAR, "colour": "red"}, "colour"),
            (
                "unknown-model-field",
                {"model": {"family": "linear", "in_dim": 3, "depth": 2}},
                "model.linear.depth",
            ),
            ("missing-model", {"loss": "mse"}, "model"),
            ("bad-loss", {**LINEAR, "loss": "mae"}, "loss"),
            ("bad-dtype", {**LINEAR, "dtype": "float16"}, "dtype"),
            ("huber-delta-zero", {**LINEAR, "huber_delta": 0}, "huber_delta"),
            (
                "weight-decay-infinite",
                '{"model": {"family": "linear", "in_dim": 3}, '
                '"optimizer": {"name": "trackin", "weight_decay": Infinity}}',
                "optimizer.trackin.weight_decay",
            ),
            (
                "lr-NaN",
                '{"model": {"family": "linear", "in_dim": 3}, "optimizer": {"lr": NaN}}',
                "optimizer.trackin.lr",
            ),
            (
                "eps-1e999",
                '{"model": {"family": "linear", "in_dim": 3}, "optimizer": {"name": "adam", "eps": 1e999}}',
                "optimizer.adam.eps",
            ),
            ("not-json", "{model", "body"),
            ("not-an-object", "[1, 2]", "body"),
        ]
    ),
    Case(
        "spec-invalid-id",
        f"/v1/streams/{BAD_ID}",
        LINEAR,
        422,
        "invalid_stream_id",
        "stream_id",
        None,
        method="PUT",
    ),
    Case(
        "spec-id-too-long",
        f"/v1/streams/{LONG_ID}",
        LINEAR,
        422,
        "invalid_stream_id",
        "stream_id",
        None,
        method="PUT",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_and_nothing_changes(http: httpx.Client, streams: Streams, case: Case) -> None:
    before = streams.state(http)
    response = case.send(http, streams)
    stream = streams.ids[case.stream] if case.stream is not None else None
    assert_error(response, case.status, case.code, field=case.field, stream=stream)
    assert streams.state(http) == before
    # No stream was created on the way (unknown ids stay unknown; invalid specs create nothing).
    assert http.get(f"/v1/streams/{streams.ids['$NEW']}").status_code == 404


def test_invalid_spec_creates_no_stream(http: httpx.Client) -> None:
    sid = unique()
    bad = http.put(f"/v1/streams/{sid}", json={**LINEAR, "optimizer": {"name": "trackin", "lr": -1}})
    assert_error(bad, 422, "invalid_input", field="optimizer.trackin.lr", stream=sid)
    assert_error(http.get(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    assert sid not in http.get("/v1/streams", params={"prefix": sid}).json()["streams"]


def test_longest_valid_id_is_accepted(http: httpx.Client) -> None:
    sid = ("a-b.c:d_" * 16)[:128]
    http.delete(f"/v1/streams/{sid}")
    create(http, sid, LINEAR)
    ok = http.post(f"/v1/streams/{sid}/observations", json=GOOD)
    assert ok.status_code == 200, ok.text
    http.delete(f"/v1/streams/{sid}")


def test_label_with_bad_target_keeps_the_pending_prediction(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    assert http.post(f"/v1/streams/{sid}/predict", json={"x": [1, 2, 3], "request_id": "r1"}).is_success
    before = state_of(http, sid, [1, 1, 1])
    wrong = http.post(f"/v1/streams/{sid}/labels", json={"request_id": "r1", "y": [1.0, 2.0]})
    assert_error(wrong, 422, "invalid_input", field="y", stream=sid)
    assert state_of(http, sid, [1, 1, 1]) == before
    right = http.post(f"/v1/streams/{sid}/labels", json={"request_id": "r1", "y": 1.0})
    assert right.status_code == 200, right.text
    assert right.json()["step"] == 1


# ----- limits (a server with a 4 KiB body limit and at most 20 observations per request) --------------


@pytest.fixture
def limited(limits_http: httpx.Client) -> Streams:
    return make_streams(limits_http)


def _chunks(data: bytes, size: int = 512) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


LIMIT_CASES = [
    _obs(
        "body-over-limit",
        [GOOD] * 19 + [{"x": [1.0] * 3, "y": 1.0, "ts": 1.0}] + ["pad" * 1500],
        "body",
        "$LIN",
        status=413,
        code="payload_too_large",
    ),
    _obs("too-many-observations", [GOOD] * 21, "observations", "$LIN", status=413, code="payload_too_large"),
    _obs(
        "too-many-in-many-streams",
        {"observations": [{**GOOD, "stream": "$LIN"}] * 21},
        "observations",
        None,
        path="/v1/observations",
        status=413,
        code="payload_too_large",
    ),
    Case(
        "spec-body-over-limit",
        "/v1/streams/$LIN?replace=true",
        '{"model": {"family": "linear", "in_dim": 3}}' + " " * 5000,
        413,
        "payload_too_large",
        "body",
        "$LIN",
        method="PUT",
    ),
    Case(
        "predict-body-over-limit",
        "/v1/streams/$LIN/predict",
        {"x": [1.0] * 2000},
        413,
        "payload_too_large",
        "body",
        "$LIN",
    ),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[c.id for c in LIMIT_CASES])
def test_limits_reject_and_nothing_changes(limits_http: httpx.Client, limited: Streams, case: Case) -> None:
    before = limited.state(limits_http)
    response = case.send(limits_http, limited)
    stream = limited.ids[case.stream] if case.stream is not None else None
    assert_error(response, case.status, case.code, field=case.field, stream=stream)
    assert limited.state(limits_http) == before


@pytest.mark.parametrize("path", ["/v1/streams/$LIN/observations", "/v1/observations", "/v1/templates/t"])
def test_chunked_body_over_limit_is_refused(limits_http: httpx.Client, limited: Streams, path: str) -> None:
    """Without a Content-Length the server counts what it reads, and stops at the limit."""
    before = limited.state(limits_http)
    body = b"[" + b", ".join([b'{"x": [1, 2, 3], "y": 1, "stream": "x"}'] * 200) + b"]"
    response = limits_http.post(limited.fill(path), content=_chunks(body), headers=_JSON)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert limited.state(limits_http) == before


def test_chunked_body_under_limit_is_read(limits_http: httpx.Client, limited: Streams) -> None:
    body = b'[{"x": [1, 2, 3], "y": 1}, {"x": [3, 2, 1], "y": 0}]'
    response = limits_http.post(
        limited.fill("/v1/streams/$LIN/observations"), content=_chunks(body, 7), headers=_JSON
    )
    assert response.status_code == 200, response.text
    assert [r["step"] for r in response.json()["results"]] == [3, 4]


def test_exactly_the_limit_of_observations_is_accepted(limits_http: httpx.Client, limited: Streams) -> None:
    response = limits_http.post(limited.fill(OBS), json=[GOOD] * 20)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 20
