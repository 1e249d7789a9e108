"""Templates (streams created on the fly, removed when idle) and late labels (predict now, learn later).

The shared server sweeps templates every 0.2 s and keeps pending labels for 2 s (conftest.SHARED_ENV).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.service import AR, LINEAR, Reference, assert_close, assert_error, create, state_of, unique
from trackin.models.specs import StreamSpec

pytestmark = pytest.mark.timeout(60)


def put_template(
    http: httpx.Client, name: str, prefix: str, spec: dict[str, Any], idle: float
) -> httpx.Response:
    return http.put(f"/v1/templates/{name}", json={"prefix": prefix, "spec": spec, "idle_seconds": idle})


def observe(http: httpx.Client, sid: str, body: Any) -> httpx.Response:
    return http.post(f"/v1/streams/{sid}/observations", json=body)


def wait_until_gone(http: httpx.Client, sid: str, timeout: float) -> float:
    """Seconds until GET says 404."""
    started = time.monotonic()
    while http.get(f"/v1/streams/{sid}").status_code != 404:
        assert time.monotonic() - started < timeout, f"{sid} still there after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_template_put_outcomes_and_listing(http: httpx.Client) -> None:
    name, prefix = unique("tpl"), unique("cam") + ":"
    created = put_template(http, name, prefix, AR, 30)
    assert created.status_code == 201, created.text
    assert created.json()["outcome"] == "created"
    same = put_template(http, name, prefix, AR, 30)
    assert same.status_code == 200
    assert same.json()["outcome"] == "unchanged"
    changed = put_template(http, name, prefix, AR, 60)
    assert changed.status_code == 200
    assert changed.json()["outcome"] == "replaced"
    listed = {t["name"]: t for t in http.get("/v1/templates").json()["templates"]}
    assert listed[name]["prefix"] == prefix
    assert listed[name]["idle_seconds"] == 60
    assert listed[name]["spec"] == StreamSpec.model_validate(AR).model_dump(mode="json")


def test_observation_for_unknown_matching_id_creates_the_stream(http: httpx.Client) -> None:
    name, prefix = unique("tpl"), unique("obj") + ":"
    assert put_template(http, name, prefix, LINEAR, 60).status_code == 201
    sid = f"{prefix}17"
    first = observe(http, sid, {"x": [1, 2, 3], "y": 1.0})
    assert first.status_code == 200, first.text
    assert first.json()["results"][0]["step"] == 1
    body = http.get(f"/v1/streams/{sid}").json()
    assert body["template"] == name
    assert body["spec"] == StreamSpec.model_validate(LINEAR).model_dump(mode="json")
    # The same way through the many-streams endpoint, mixed with an existing stream.
    other = f"{prefix}18"
    many = http.post(
        "/v1/observations",
        json={
            "observations": [
                {"stream": sid, "x": [1, 2, 3], "y": 1.0},
                {"stream": other, "x": [0, 0, 1], "y": 0},
            ]
        },
    )
    assert many.status_code == 200, many.text
    assert [r["step"] for r in many.json()["results"]] == [2, 1]
    # Predictions are reads: they create nothing.
    unborn = f"{prefix}19"
    predicted = http.post(f"/v1/streams/{unborn}/predict", json={"x": [1, 2, 3]})
    assert_error(predicted, 404, "unknown_stream", stream=unborn)
    listed = http.get("/v1/streams", params={"prefix": prefix}).json()["streams"]
    assert listed == [sid, other]


def test_unknown_and_unmatched_is_404(http: httpx.Client) -> None:
    name, prefix = unique("tpl"), unique("match") + ":"
    put_template(http, name, prefix, LINEAR, 60)
    sid = unique("nomatch")
    assert_error(observe(http, sid, {"x": [1, 2, 3], "y": 1.0}), 404, "unknown_stream", stream=sid)
    assert_error(http.get(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    # A prefix match must be a real prefix, not a substring elsewhere.
    inside = f"x{prefix}1"
    assert_error(observe(http, inside, {"x": [1, 2, 3], "y": 1.0}), 404, "unknown_stream", stream=inside)


def test_reading_a_matching_unknown_id_creates_nothing(http: httpx.Client) -> None:
    name, prefix = unique("tpl"), unique("read") + ":"
    put_template(http, name, prefix, LINEAR, 60)
    sid = f"{prefix}1"
    assert_error(http.get(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    assert_error(http.delete(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    assert http.get("/v1/streams", params={"prefix": prefix}).json()["streams"] == []


def test_a_rejected_first_observation_creates_nothing_it_should_not(http: httpx.Client) -> None:
    """Creating from a template is the stream's creation, not a step: a bad first observation leaves a
    fresh stream (zero steps) at most, never a half-applied one."""
    name, prefix = unique("tpl"), unique("bad") + ":"
    put_template(http, name, prefix, LINEAR, 60)
    sid = f"{prefix}1"
    bad = observe(http, sid, {"x": [1, 2], "y": 1.0})
    assert_error(bad, 422, "invalid_input", field="observations[0].x", stream=sid)
    described = http.get(f"/v1/streams/{sid}")
    if described.status_code == 200:
        assert described.json()["figures"]["steps"] == 0


def test_longest_matching_prefix_wins(http: httpx.Client) -> None:
    base = unique("nest")
    put_template(http, unique("short"), f"{base}:", LINEAR, 60)
    long_name = unique("long")
    put_template(http, long_name, f"{base}:car:", AR, 60)
    assert observe(http, f"{base}:car:1", {"value": [1.0, 2.0]}).status_code == 200
    assert http.get(f"/v1/streams/{base}:car:1").json()["template"] == long_name
    assert observe(http, f"{base}:bus:1", {"x": [1, 2, 3], "y": 0.0}).status_code == 200


def test_idle_streams_are_removed_busy_and_explicit_ones_stay(http: httpx.Client) -> None:
    """Idle time 2 s (sweeps every 0.2 s): a stream left alone goes, one observed every 0.05 s stays until
    it is left alone too, one created with PUT stays. Waits are for the sweep, with generous deadlines; the
    busy stream's step count shows it was never removed and re-created meanwhile."""
    name, prefix = unique("tpl"), unique("idle") + ":"
    idle_seconds = 2.0  # 40 times the busy stream's pace: a loaded machine cannot make it look idle
    put_template(http, name, prefix, LINEAR, idle_seconds)
    idle, busy, explicit = f"{prefix}idle", f"{prefix}busy", f"{prefix}explicit"
    create(http, explicit, LINEAR)  # created with PUT: not the template's to remove
    assert observe(http, idle, {"x": [1, 2, 3], "y": 1.0}).status_code == 200
    last_sent = time.monotonic()  # the server's idle clock for busy starts after this
    assert observe(http, busy, {"x": [1, 2, 3], "y": 1.0}).status_code == 200
    # Keep one busy until the other has gone.
    steps, deadline = 1, time.monotonic() + 30
    while http.get(f"/v1/streams/{idle}").status_code != 404:
        assert time.monotonic() < deadline, f"{idle} still there after 30 s"
        last_sent = time.monotonic()
        answer = observe(http, busy, {"x": [1, 2, 3], "y": 1.0})
        assert answer.status_code == 200
        steps += 1
        assert answer.json()["results"][0]["step"] == steps, "the busy stream was removed meanwhile"
        time.sleep(0.05)
    assert http.get(f"/v1/streams/{busy}").status_code == 200
    wait_until_gone(http, busy, timeout=30)
    assert time.monotonic() - last_sent > idle_seconds  # not before its idle time
    assert http.get(f"/v1/streams/{explicit}").status_code == 200
    # A removed stream comes back fresh on its next observation.
    again = observe(http, idle, {"x": [1, 2, 3], "y": 1.0})
    assert again.json()["results"][0]["step"] == 1


def test_deleting_a_template_keeps_its_streams(http: httpx.Client) -> None:
    name, prefix = unique("tpl"), unique("del") + ":"
    put_template(http, name, prefix, LINEAR, 60)
    observe(http, f"{prefix}1", {"x": [1, 2, 3], "y": 1.0})
    assert http.delete(f"/v1/templates/{name}").status_code == 204
    assert_error(http.delete(f"/v1/templates/{name}"), 404, "unknown_stream", field="name")
    assert http.get(f"/v1/streams/{prefix}1").status_code == 200
    sid = f"{prefix}2"
    assert_error(observe(http, sid, {"x": [1, 2, 3], "y": 1.0}), 404, "unknown_stream", stream=sid)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prefix": "a b", "spec": LINEAR}, "prefix"),
        ({"prefix": "", "spec": LINEAR}, "prefix"),
        ({"prefix": "ok:", "spec": LINEAR, "idle_seconds": 0}, "idle_seconds"),
        ({"prefix": "ok:", "spec": LINEAR, "idle_seconds": -1}, "idle_seconds"),
        ({"prefix": "ok:", "spec": {"model": {"family": "linear", "in_dim": 0}}}, "spec.model.linear.in_dim"),
        ({"prefix": "ok:", "spec": {**LINEAR, "optimizer": {"lr": 0}}}, "spec.optimizer.trackin.lr"),
        ({"prefix": "ok:", "spec": LINEAR, "ttl": 3}, "ttl"),
        ({"spec": LINEAR}, "prefix"),
    ],
)
def test_invalid_templates_are_rejected(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    name = unique("tpl")
    assert_error(http.put(f"/v1/templates/{name}", json=body), 422, "invalid_input", field=field)
    assert name not in {t["name"] for t in http.get("/v1/templates").json()["templates"]}


def test_invalid_template_name(http: httpx.Client) -> None:
    bad = http.put("/v1/templates/bad name", json={"prefix": "ok:", "spec": LINEAR})
    assert_error(bad, 422, "invalid_stream_id", field="name")


# ----- late labels ----------------------------------------------------------------------------------------


def test_late_label_applies_the_step_for_the_kept_inputs(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    reference = Reference(LINEAR)
    x1, x2 = [0.3, -1.0, 2.0], [1.0, 1.0, -0.5]
    predicted = http.post(f"/v1/streams/{sid}/predict", json={"x": x1, "request_id": "r-1"})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json() == {
        "stream": sid,
        "prediction": predicted.json()["prediction"],
        "request_id": "r-1",
    }
    assert_close(predicted.json()["prediction"], reference.predict(x1), "prediction")
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["steps"] == 0  # predicting learns nothing

    # Other observations arrive in between; the label then steps on x1 with the parameters of then.
    between = {"x": x2, "y": 0.5}
    served = observe(http, sid, between).json()["results"][0]
    labelled = http.post(f"/v1/streams/{sid}/labels", json={"request_id": "r-1", "y": 2.0})
    assert labelled.status_code == 200, labelled.text
    result = labelled.json()
    assert result["request_id"] == "r-1"
    assert [served["step"], result["step"]] == [1, 2]
    expected = reference.observe_all([between, {"x": x1, "y": 2.0}])
    assert_close(served["prediction"], expected[0].prediction, "between")
    assert_close(result["prediction"], expected[1].prediction, "label prediction")
    assert_close(result["loss"], [expected[1].loss or 0.0], "label loss", squared=True)

    # A label is used once.
    again = http.post(f"/v1/streams/{sid}/labels", json={"request_id": "r-1", "y": 2.0})
    assert_error(again, 404, "unknown_request", field="request_id", stream=sid)
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["steps"] == 2


def test_request_ids_are_per_stream(http: httpx.Client) -> None:
    a, b = unique(), unique()
    create(http, a, LINEAR)
    create(http, b, LINEAR)
    http.post(f"/v1/streams/{a}/predict", json={"x": [1, 2, 3], "request_id": "same"})
    wrong_stream = http.post(f"/v1/streams/{b}/labels", json={"request_id": "same", "y": 1.0})
    assert_error(wrong_stream, 404, "unknown_request", field="request_id", stream=b)
    assert http.post(f"/v1/streams/{a}/labels", json={"request_id": "same", "y": 1.0}).status_code == 200


def test_expired_label_is_404_and_changes_nothing(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    http.post(f"/v1/streams/{sid}/predict", json={"x": [1, 2, 3], "request_id": "late"})
    before = state_of(http, sid, [1, 1, 1])
    time.sleep(2.3)  # past the 2 s the shared server keeps inputs (checked against its clock at each access)
    expired = http.post(f"/v1/streams/{sid}/labels", json={"request_id": "late", "y": 1.0})
    assert_error(expired, 404, "unknown_request", field="request_id", stream=sid)
    assert state_of(http, sid, [1, 1, 1]) == before


def test_deleting_a_stream_drops_its_pending_labels(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    http.post(f"/v1/streams/{sid}/predict", json={"x": [1, 2, 3], "request_id": "r"})
    http.delete(f"/v1/streams/{sid}")
    create(http, sid, LINEAR)
    assert_error(
        http.post(f"/v1/streams/{sid}/labels", json={"request_id": "r", "y": 1.0}),
        404,
        "unknown_request",
        field="request_id",
        stream=sid,
    )


def test_ar_streams_take_no_request_id(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, AR)
    refused = http.post(f"/v1/streams/{sid}/predict", json={"request_id": "r"})
    assert_error(refused, 422, "invalid_input", field="request_id", stream=sid)


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("spec.model.linear.seed", {**LINEAR, "model": {**LINEAR["model"], "seed": 2**64}}),
        ("spec.huber_delta", {**LINEAR, "huber_delta": 1e300}),
        ("spec.drift.warmup", {**LINEAR, "drift": {"warmup": 2**63}}),
    ],
)
def test_a_spec_the_engine_cannot_hold_is_refused_and_leaves_no_template(
    http: httpx.Client, field: str, spec: dict[str, Any]
) -> None:
    """Each of these once answered 500 and stayed registered, failing every matching stream's first step."""
    name, prefix = unique("tpl"), unique("cam") + ":"
    refused = put_template(http, name, prefix, spec, 60)
    assert_error(refused, 422, "invalid_input", field=field)
    assert name not in [t["name"] for t in http.get("/v1/templates").json()["templates"]]
    sid = prefix + "1"
    assert_error(observe(http, sid, {"x": [1, 2, 3], "y": 1.0}), 404, "unknown_stream", stream=sid)
