"""PUT/GET/DELETE /v1/streams/{id} and GET /v1/streams, against a real server."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.service import AR, LINEAR, assert_error, create, unique
from trackin.models.specs import StreamSpec

pytestmark = pytest.mark.timeout(60)


def observe(http: httpx.Client, stream_id: str, body: Any) -> list[dict[str, Any]]:
    response = http.post(f"/v1/streams/{stream_id}/observations", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_put_creates_with_defaults_filled(http: httpx.Client) -> None:
    sid = unique()
    response = http.put(f"/v1/streams/{sid}", json=LINEAR)
    assert response.status_code == 201
    body = response.json()
    assert body["outcome"] == "created"
    assert body["stream"] == sid
    assert body["spec"] == StreamSpec.model_validate(LINEAR).model_dump(mode="json")
    assert body["spec"]["optimizer"]["name"] == "trackin"
    assert body["figures"]["steps"] == 0
    assert body["created_at"] == body["updated_at"]
    assert abs(body["created_at"] - time.time()) < 60


def test_optimizer_name_left_out_is_trackin(http: httpx.Client) -> None:
    sid = unique()
    body = create(http, sid, {**LINEAR, "optimizer": {"lr": 0.01, "eta": 0.1}})
    assert body["spec"]["optimizer"] == {
        **StreamSpec.model_validate(LINEAR).optimizer.model_dump(mode="json"),
        "lr": 0.01,
        "eta": 0.1,
    }


def test_same_spec_again_is_200_unchanged_and_keeps_state(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    observe(http, sid, [{"x": [1, 2, 3], "y": 1.0}, {"x": [0, 1, 0], "y": -1.0}])
    before = http.get(f"/v1/streams/{sid}").json()

    # The same spec, spelled with every default written out, is the same spec.
    explicit = StreamSpec.model_validate(LINEAR).model_dump(mode="json")
    for spec in (LINEAR, explicit):
        again = http.put(f"/v1/streams/{sid}", json=spec)
        assert again.status_code == 200, again.text
        assert again.json()["outcome"] == "unchanged"
    after = http.get(f"/v1/streams/{sid}").json()
    assert after == before
    assert after["figures"]["steps"] == 2


def test_different_spec_is_409_unless_replace(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, LINEAR)
    observe(http, sid, {"x": [1, 2, 3], "y": 1.0})
    before = http.get(f"/v1/streams/{sid}").json()
    other = {**LINEAR, "optimizer": {"name": "sgd", "lr": 0.01}}

    conflict = http.put(f"/v1/streams/{sid}", json=other)
    assert_error(conflict, 409, "spec_conflict", field="spec", stream=sid)
    assert http.get(f"/v1/streams/{sid}").json() == before

    replaced = http.put(f"/v1/streams/{sid}", params={"replace": "true"}, json=other)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["outcome"] == "replaced"
    assert body["spec"]["optimizer"]["name"] == "sgd"
    assert body["figures"]["steps"] == 0  # a fresh model
    assert observe(http, sid, {"x": [1, 2, 3], "y": 1.0})[0]["step"] == 1


def test_figures_follow_the_observations(http: httpx.Client) -> None:
    sid = unique()
    created = create(http, sid, LINEAR)
    time.sleep(0.01)
    results = observe(http, sid, [{"x": [1, 0.5, -1], "y": float(i % 3)} for i in range(12)])
    body = http.get(f"/v1/streams/{sid}").json()
    f = body["figures"]
    assert f["steps"] == 12 == results[-1]["step"]
    losses = [r["loss"] for r in results]
    assert f["last_loss"] == pytest.approx(losses[-1], rel=1e-6)
    # An exponentially weighted mean of the losses lies between their extremes.
    assert min(losses) - 1e-6 <= f["loss_ewma"] <= max(losses) + 1e-6
    assert 0.0 <= f["beta"] <= 1.0  # beta_t of the cos rule, with beta = 1
    assert f["eps_norm"] == 0.0  # eta = 0: no perturbation
    assert f["grad_norm"] >= 0.0
    assert f["warming"] is False
    assert f["nonfinite_skips"] == 0
    assert body["created_at"] == created["created_at"]
    assert body["updated_at"] > body["created_at"]


def test_eps_norm_grows_with_eta(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, {**LINEAR, "optimizer": {"name": "trackin", "eta": 0.1}})
    observe(http, sid, [{"x": [1, 0.5, -1], "y": 2.0}] * 3)
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["eps_norm"] > 0


def test_ar_stream_is_warming_until_its_window_fills(http: httpx.Client) -> None:
    sid = unique()
    create(http, sid, {**AR, "optimizer": {"precondition": "none"}})  # first order: a window of 4 values
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["warming"] is True
    warming = [r["warming"] for r in observe(http, sid, [{"value": [i, -i]} for i in range(6)])]
    assert warming[:3] == [True] * 3
    assert warming[-1] is False
    assert http.get(f"/v1/streams/{sid}").json()["figures"]["warming"] is False


def test_a_default_series_forecasts_from_its_second_value(http: httpx.Client) -> None:
    """The scale-free default needs no lag window: only the first value has nothing to be scored by."""
    sid = unique()
    create(http, sid, AR)
    results = observe(http, sid, [{"value": [i, -i]} for i in range(3)])
    assert [r["warming"] for r in results] == [True, False, False]
    assert results[1]["prediction"] == [0.0, 0.0], "no change: the naive forecast"
    figures = http.get(f"/v1/streams/{sid}").json()["figures"]
    assert figures["warming"] is False
    assert figures["naive_loss"] is not None


def test_get_and_delete(http: httpx.Client) -> None:
    sid = unique()
    assert_error(http.get(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    assert_error(http.delete(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    create(http, sid, LINEAR)
    observe(http, sid, {"x": [1, 2, 3], "y": 1.0})
    deleted = http.delete(f"/v1/streams/{sid}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_error(http.get(f"/v1/streams/{sid}"), 404, "unknown_stream", stream=sid)
    gone = http.post(f"/v1/streams/{sid}/observations", json={"x": [1, 2, 3], "y": 1.0})
    assert_error(gone, 404, "unknown_stream", stream=sid)
    # Created again, it starts from scratch.
    assert create(http, sid, LINEAR)["figures"]["steps"] == 0


def test_listing_pages_cover_every_id_exactly_once(http: httpx.Client) -> None:
    prefix = unique("list") + ":"
    ids = {f"{prefix}{i:03d}" for i in range(23)}
    for sid in ids:
        create(http, sid, LINEAR)
    create(http, unique("other"), LINEAR)  # outside the prefix

    for limit in (1, 5, 23, 100):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"prefix": prefix, "limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            response = http.get("/v1/streams", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["streams"]) <= limit
            seen.extend(page["streams"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages <= len(ids), "pagination does not end"
        assert seen == sorted(ids), f"limit {limit}"
        assert pages == -(-len(ids) // limit)

    # Deleting streams between pages never repeats or skips the others.
    first = http.get("/v1/streams", params={"prefix": prefix, "limit": 10}).json()
    http.delete(f"/v1/streams/{first['streams'][0]}")
    http.delete(f"/v1/streams/{prefix}015")
    rest = http.get("/v1/streams", params={"prefix": prefix, "limit": 100, "cursor": first["next_cursor"]})
    assert rest.json()["streams"] == sorted(ids - {f"{prefix}015"})[10:]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "query.limit"), ({"limit": 10_001}, "query.limit"), ({"limit": "x"}, "query.limit")],
)
def test_listing_rejects_bad_limits(http: httpx.Client, params: dict[str, Any], field: str) -> None:
    assert_error(http.get("/v1/streams", params=params), 422, "invalid_input", field=field)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v1/streams/s", {"GET", "PUT", "DELETE"}),
        ("DELETE", "/v1/observations", {"POST"}),
        ("PUT", "/healthz", {"GET"}),
    ],
)
def test_a_wrong_method_is_405_naming_the_allowed_ones(
    http: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    reply = http.request(method, path)
    assert_error(reply, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in reply.headers["allow"].split(",")}, reply.headers
