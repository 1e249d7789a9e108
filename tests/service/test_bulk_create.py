"""``PUT /v1/streams``: many streams in one call, all or nothing, durable like single creations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service import AR, LINEAR, assert_error, create, unique
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(120)


def _bulk(ids: list[str], spec: dict[str, Any] = LINEAR) -> dict[str, Any]:
    return {"streams": [{"id": s, "spec": spec} for s in ids]}


def _known(http: httpx.Client, ids: list[str]) -> list[str]:
    return [s for s in ids if http.get(f"/v1/streams/{s}").status_code == 200]


def test_bulk_creates_each_stream_as_a_single_put_would(http: httpx.Client) -> None:
    prefix = unique("bulk")
    linear = [f"{prefix}-l{i}" for i in range(40)]
    series = [f"{prefix}-a{i}" for i in range(10)]
    body = {"streams": _bulk(linear)["streams"] + _bulk(series, AR)["streams"]}
    made = http.put("/v1/streams", json=body)
    assert made.status_code == 201, made.text
    assert made.json() == {"created": 50, "unchanged": 0}
    single = unique("single")
    create(http, single, LINEAR)
    expected = http.get(f"/v1/streams/{single}").json()["spec"]
    for stream_id in linear:
        described = http.get(f"/v1/streams/{stream_id}").json()
        assert described["spec"] == expected
        assert described["figures"]["steps"] == 0
    listed = http.get("/v1/streams", params={"prefix": prefix, "limit": 100}).json()["streams"]
    assert sorted(listed) == sorted(linear + series)
    observed = http.post(f"/v1/streams/{linear[3]}/observations", json={"x": [1, 2, 3], "y": 1.0})
    assert observed.status_code == 200, observed.text
    # The same call again changes nothing; one new id among known ones creates just that one.
    again = http.put("/v1/streams", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == {"created": 0, "unchanged": 50}
    assert http.get(f"/v1/streams/{linear[3]}").json()["figures"]["steps"] == 1
    more = http.put("/v1/streams", json=_bulk([*linear[:5], f"{prefix}-new"]))
    assert more.status_code == 201
    assert more.json() == {"created": 1, "unchanged": 5}


@pytest.mark.parametrize(
    ("case", "status", "code", "field", "names"),
    [
        ("duplicate", 422, "invalid_input", "streams[2].id", True),
        ("dot-segment", 422, "invalid_stream_id", "streams[2].id", False),
        ("bad-id", 422, "invalid_input", "streams.2.id", False),
        ("other-spec", 409, "spec_conflict", "streams[2].spec", True),
        ("too-large", 422, "stream_too_large", "streams[2].spec", True),
        ("bad-spec", 422, "invalid_input", "streams.2.spec.model.linear.in_dim", False),
    ],
)
def test_one_bad_item_refuses_the_whole_call(
    http: httpx.Client, case: str, status: int, code: str, field: str, names: bool
) -> None:
    """``names``: the error names the bad item's stream (once its id is known to be valid)."""
    prefix = unique("bulkbad")
    existing = f"{prefix}-existing"
    create(http, existing, LINEAR)
    fresh = [f"{prefix}-{i}" for i in range(4)]
    items: list[dict[str, Any]] = [{"id": s, "spec": LINEAR} for s in fresh]
    bad: dict[str, Any] = {
        "duplicate": {"id": fresh[0], "spec": LINEAR},
        "dot-segment": {"id": "..", "spec": LINEAR},
        "bad-id": {"id": "has space", "spec": LINEAR},
        "other-spec": {"id": existing, "spec": AR},
        "too-large": {
            "id": f"{prefix}-big",
            "spec": {"model": {"family": "mlp", "in_dim": 4, "hidden": [4096] * 4}},
        },
        "bad-spec": {"id": f"{prefix}-x", "spec": {"model": {"family": "linear", "in_dim": 0}}},
    }[case]
    items.insert(2, bad)
    response = http.put("/v1/streams", json={"streams": items})
    assert_error(response, status, code, field=field, stream=bad["id"] if names else None)
    assert _known(http, fresh) == []
    assert http.get(f"/v1/streams/{existing}").json()["spec"]["model"]["family"] == "linear"


def test_empty_and_oversized_calls_are_refused(http: httpx.Client) -> None:
    assert_error(http.put("/v1/streams", json={"streams": []}), 422, "invalid_input", field="streams")
    many = _bulk([f"x{i}" for i in range(10_001)])
    assert_error(http.put("/v1/streams", json=many), 422, "invalid_input", field="streams")


def test_bulk_created_streams_survive_a_restart(tmp_path: Path) -> None:
    ids = [f"durable-{i}" for i in range(300)]
    with TrackinServer(tmp_path, store="sqlite") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.put("/v1/streams", json=_bulk(ids)).status_code == 201
        server.kill()  # a crash: creations were acknowledged, so they were written
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert _known(http, ids) == ids
            listed = http.get("/v1/streams", params={"prefix": "durable-", "limit": 1000}).json()
            assert len(listed["streams"]) == 300
