"""Observations, predictions and the operational endpoints; every served number equals the engine's."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service import (
    AR,
    LINEAR,
    MLP,
    Reference,
    assert_close,
    assert_error,
    assert_results_match,
    create,
    unique,
)
from trackin.models.specs import ARModel, StreamSpec, TrackModel, layer_sizes

pytestmark = pytest.mark.timeout(60)

SPECS: dict[str, dict[str, Any]] = {
    "linear": LINEAR,
    "linear-2out-sgd-momentum": {
        "model": {"family": "linear", "in_dim": 3, "out_dim": 2},
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
    },
    "linear-bce": {"model": {"family": "linear", "in_dim": 3, "init": "random"}, "loss": "bce"},
    "mlp-adam-float64": {**MLP, "optimizer": {"name": "adam", "lr": 0.01}, "dtype": "float64"},
    "mlp-trackin-eta-huber": {**MLP, "optimizer": {"name": "trackin", "eta": 0.05}, "loss": "huber"},
    "ar-delta": AR,
    "ar-level-hidden": {
        "model": {"family": "ar", "dim": 1, "lags": 4, "target": "level", "hidden": [5], "init": "random"}
    },
    "ar-first-order": {**AR, "optimizer": {"precondition": "none"}},
    "track-with-frames": {"model": {"family": "track", "dim": 2, "lags": 2}},
}


def observations(spec: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` observations that fit ``spec``, different from each other (order matters to the results)."""
    rng = random.Random(seed)
    parsed = StreamSpec.model_validate(spec)
    model = parsed.model
    if isinstance(model, ARModel | TrackModel):
        level = [rng.uniform(-1, 1) for _ in range(model.dim)]
        out = []
        frame = 0
        for _ in range(n):
            level = [v + rng.gauss(0, 0.3) for v in level]
            out.append({"value": list(level)})
            if isinstance(model, TrackModel):  # frame numbers with gaps
                frame += rng.choice([1, 1, 2, 4])
                out[-1]["ts"] = frame
        return out
    out_dim = layer_sizes(model)[-1]
    items = []
    for _ in range(n):
        x = [rng.uniform(-2, 2) for _ in range(model.in_dim)]
        y: Any = [rng.random() if parsed.loss == "bce" else rng.gauss(sum(x), 0.5) for _ in range(out_dim)]
        items.append({"x": x, "y": y[0] if out_dim == 1 and rng.random() < 0.5 else y})
    return items


def post(http: httpx.Client, path: str, body: Any) -> list[dict[str, Any]]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    results: list[dict[str, Any]] = response.json()["results"]
    return results


@pytest.mark.parametrize("name", list(SPECS))
def test_served_results_equal_the_engine(http: httpx.Client, name: str) -> None:
    spec = SPECS[name]
    sid = unique(name)
    create(http, sid, spec)
    items = observations(spec, 30, seed=len(name))
    served: list[dict[str, Any]] = []
    path = f"/v1/streams/{sid}/observations"
    # One at a time, as lists of several, and through the many-streams endpoint (both of its forms).
    for item in items[:5]:
        served.extend(post(http, path, item))
    served.extend(post(http, path, items[5:12]))
    served.extend(post(http, path, [items[12]]))
    many = post(http, "/v1/observations", {"observations": [{**o, "stream": sid} for o in items[13:20]]})
    assert [r.pop("stream") for r in many] == [sid] * 7
    served.extend(many)
    bare = post(http, "/v1/observations", [{**o, "stream": sid} for o in items[20:30]])
    assert {r.pop("stream") for r in bare} == {sid}
    served.extend(bare)

    reference = Reference(spec)
    expected = reference.observe_all(items)
    assert_results_match(served, expected)
    model = reference.spec.model
    is_ar = isinstance(model, ARModel | TrackModel)
    # One step per observation: a series steps once a previous value exists (a first-order ar stream:
    # once its lag window is full and a target follows).
    warm = 0
    if is_ar:
        warm = 1 if reference.spec.tracking else model.window  # type: ignore[union-attr]
    assert [r["step"] for r in served] == [max(0, i - warm) for i in range(1, 31)]
    for r in served:
        assert set(r) <= {"step", "prediction", "loss", "applied", "forecast", "warming", "drift"}
        assert ("forecast" in r) == is_ar

    # Predictions without learning equal the engine's and change nothing.
    probe = None if is_ar else items[0]["x"]
    for _ in range(2):
        response = http.post(f"/v1/streams/{sid}/predict", json=None if probe is None else {"x": probe})
        assert response.status_code == 200, response.text
        assert response.json()["stream"] == sid
        assert_close(response.json()["prediction"], reference.predict(probe), "predict")
    if is_ar:  # the forecast is the last observation's
        assert_close(served[-1]["forecast"], reference.predict(None), "forecast")
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["steps"] == served[-1]["step"]


def test_single_output_predictions_are_numbers_and_multi_output_lists(http: httpx.Client) -> None:
    one, two = unique(), unique()
    create(http, one, LINEAR)
    create(http, two, SPECS["linear-2out-sgd-momentum"])
    a = post(http, f"/v1/streams/{one}/observations", {"x": [1, 2, 3], "y": [1.0]})[0]
    b = post(http, f"/v1/streams/{two}/observations", {"x": [1, 2, 3], "y": [1.0, 2.0]})[0]
    assert isinstance(a["prediction"], float)
    assert isinstance(b["prediction"], list)
    assert len(b["prediction"]) == 2
    assert b["prediction"] == [0.0, 0.0]  # zero init
    predicted = http.post(f"/v1/streams/{two}/predict", json={"x": [0, 0, 0]}).json()["prediction"]
    assert isinstance(predicted, list)
    assert len(predicted) == 2


def test_many_streams_in_one_request_answered_in_order(http: httpx.Client) -> None:
    specs = {unique("lin"): LINEAR, unique("ar"): AR, unique("mlp"): MLP}
    for sid, spec in specs.items():
        create(http, sid, spec)
    per_stream = {sid: observations(spec, 12, seed=i) for i, (sid, spec) in enumerate(specs.items())}
    # Interleave them irregularly; remember each item's stream.
    order = [sid for sid in specs for _ in range(12)]
    random.Random(5).shuffle(order)
    cursor = dict.fromkeys(specs, 0)
    body = []
    for sid in order:
        body.append({"stream": sid, **per_stream[sid][cursor[sid]]})
        cursor[sid] += 1
    results = post(http, "/v1/observations", {"observations": body})
    assert [r["stream"] for r in results] == order
    for sid, spec in specs.items():
        mine = [r for r in results if r["stream"] == sid]
        assert_results_match(mine, Reference(spec).observe_all(per_stream[sid]))


def test_ar_predict_without_body_is_the_forecast(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, AR)
    assert http.post(f"/v1/streams/{sid}/predict").json()["prediction"] is None  # still warming
    results = post(http, f"/v1/streams/{sid}/observations", [{"value": [i, 2 * i]} for i in range(6)])
    assert results[-1]["forecast"] is not None
    predicted = http.post(f"/v1/streams/{sid}/predict")
    assert predicted.status_code == 200, predicted.text
    # /predict and the observation's answer compute the forecast on two code paths: float32 tolerances
    assert predicted.json()["prediction"] == pytest.approx(results[-1]["forecast"], rel=1e-6)
    x_given = http.post(f"/v1/streams/{sid}/predict", json={"x": [1.0]})
    assert_error(x_given, 422, "invalid_input", field="x", stream=sid)


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"engine": "up"}}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), f"unresolvable $ref {ref}"
        assert part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def test_openapi_is_valid_and_has_examples(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "trackin"
    for ref in _refs(document):
        _resolve(document, ref)
    paths = document["paths"]
    expected = {
        ("/v1/streams/{stream_id}", "put"),
        ("/v1/streams/{stream_id}", "get"),
        ("/v1/streams/{stream_id}", "delete"),
        ("/v1/streams", "get"),
        ("/v1/streams/{stream_id}/observations", "post"),
        ("/v1/observations", "post"),
        ("/v1/streams/{stream_id}/predict", "post"),
        ("/v1/streams/{stream_id}/labels", "post"),
        ("/v1/templates/{name}", "put"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    for path, method in expected:
        operation = paths[path][method]
        assert operation["summary"], (path, method)
        assert operation["responses"], (path, method)
    for path, method in [
        ("/v1/streams/{stream_id}", "put"),
        ("/v1/streams/{stream_id}/observations", "post"),
        ("/v1/observations", "post"),
    ]:
        content = paths[path][method]["requestBody"]["content"]["application/json"]
        assert content.get("examples"), (path, method)
        # Every example spec is a valid spec.
        if path == "/v1/streams/{stream_id}":
            for example in content["examples"].values():
                StreamSpec.model_validate(example["value"])
    template = _resolve(document, "#/components/schemas/TemplateIn")
    assert template.get("examples")


def test_docs_page_serves(http: httpx.Client) -> None:
    docs = http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert "/openapi.json" in docs.text


def _samples(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("trackin_"), family.name
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def test_metrics_count_observations_and_requests(http: httpx.Client) -> None:
    applied = ("trackin_observations_total", frozenset({("outcome", "applied"), ("transport", "rest")}))
    rejected = ("trackin_observations_total", frozenset({("outcome", "rejected"), ("transport", "rest")}))
    sid = unique()
    create(http, sid, LINEAR)
    before = _samples(http)
    post(http, f"/v1/streams/{sid}/observations", [{"x": [1, 2, 3], "y": 1.0}] * 4)
    bad = http.post(f"/v1/streams/{sid}/observations", json={"x": [1, 2], "y": 1.0})
    assert bad.status_code == 422
    after = _samples(http)
    assert after[applied] - before[applied] == 4
    assert after[rejected] - before[rejected] == 1
    ok_route = (
        "trackin_http_requests_total",
        frozenset({("route", "/v1/streams/{stream_id}/observations"), ("method", "POST"), ("status", "200")}),
    )
    assert after[ok_route] - before.get(ok_route, 0) == 1


def test_series_times_must_increase_within_a_request_and_after_the_last(http: httpx.Client) -> None:
    sid = unique("track")
    create(http, sid, {"model": {"family": "track", "dim": 1}})
    body = [{"value": [1.0], "ts": 5}, {"value": [2.0], "ts": 5}]
    response = http.post(f"/v1/streams/{sid}/observations", json=body)
    assert_error(response, 422, "invalid_input", field="observations[1].ts", stream=sid)
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["steps"] == 0, "nothing applied"
    ok = post(http, f"/v1/streams/{sid}/observations", [{"value": [1.0], "ts": 5}, {"value": [3.0], "ts": 7}])
    assert ok[1]["prediction"] == 1.0  # no velocity yet: the last value
    late = http.post(f"/v1/streams/{sid}/observations", json={"value": [4.0], "ts": 6})
    assert_error(late, 422, "invalid_input", field="observations[0].ts", stream=sid)
    assert "after the stream's last time 7.0" in late.json()["error"]["message"]
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["steps"] == 1, "nothing applied"
    (next_,) = post(http, f"/v1/streams/{sid}/observations", {"value": [9.0], "ts": 9})
    assert next_["prediction"] == 5.0, "constant velocity over the frame gap: 3 + 1 * (9 - 7)"
