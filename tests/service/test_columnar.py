"""The columnar form over a real server: ``{"streams", "x", "y"}`` (or ``value``, ``ts``) on REST and on
the WebSocket (JSON lists, or MessagePack raw little-endian buffers), answered as columns that equal the
in-process engine; and a bad row or stream rejects the whole body, naming the field, with nothing applied."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.service import AR, LINEAR, Reference, assert_close, assert_error, create, state_of, unique
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(90)


def _rows(n: int, seed: int, streams: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` observations spread over ``streams`` in a random order (repeats included)."""
    rng = random.Random(seed)
    ids = [rng.choice(streams) for _ in range(n)]
    x = np.array([[rng.uniform(-1, 1) for _ in range(3)] for _ in range(n)])
    y = x.sum(axis=1) + np.array([rng.gauss(0, 0.1) for _ in range(n)])
    return ids, x, y


def _check(columns: dict[str, Any], ids: list[str], x: np.ndarray, y: np.ndarray) -> None:
    """The served columns equal a per-stream reference engine fed the same observations in order."""
    references = {s: Reference(LINEAR) for s in set(ids)}
    assert len(columns["step"]) == len(ids)
    for i, stream in enumerate(ids):
        want = references[stream].observe({"x": x[i].tolist(), "y": float(y[i])})
        assert columns["step"][i] == want.step
        assert columns["applied"][i] == want.applied
        assert_close(columns["prediction"][i], want.prediction, f"prediction {i}", step=want.step)
        assert_close(columns["loss"][i], [want.loss], f"loss {i}", step=want.step, squared=True)
    assert columns["skipped"] == []
    assert columns["drift"] == []


def test_rest_columns_equal_the_engine(http: httpx.Client) -> None:
    streams = [unique("col") for _ in range(3)]
    for s in streams:
        create(http, s, LINEAR)
    ids, x, y = _rows(40, 1, streams)
    response = http.post("/v1/observations", json={"streams": ids, "x": x.tolist(), "y": y.tolist()})
    assert response.status_code == 200, response.text
    _check(response.json(), ids, x, y)


def test_series_columns_with_times(http: httpx.Client) -> None:
    sid = unique("colar")
    create(http, sid, AR)
    values = [[float(i), -float(i)] for i in range(6)]
    body = {"streams": [sid] * 6, "value": values, "ts": [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]}
    response = http.post("/v1/observations", json=body)
    assert response.status_code == 200, response.text
    served = response.json()
    reference = Reference(AR)
    for i, value in enumerate(values):
        want = reference.observe({"value": value, "ts": body["ts"][i]})
        assert (served["step"][i], served["warming"][i]) == (want.step, want.warming)
        assert_close(served["forecast"][i], want.forecast, f"forecast {i}", step=want.step)


BAD = [
    ("nan-row", lambda ids, x, y: (ids, [*x[:2], [0.0, float("nan"), 0.0], *x[3:]], y), "x[2][1]"),
    ("short-row", lambda ids, x, y: (ids, [*x[:1], [0.0, 1.0], *x[2:]], y), "x"),
    ("wide", lambda ids, x, y: (ids, [[*r, 0.0] for r in x], y), "x[0]"),
    ("rows-missing", lambda ids, x, y: (ids, x[:-1], y), "x"),
    ("y-inf", lambda ids, x, y: (ids, x, [*y[:4], float("inf"), *y[5:]]), "y[4]"),
    ("bad-id", lambda ids, x, y: ([*ids[:3], "no spaces allowed", *ids[4:]], x, y), "streams[3]"),
]


@pytest.mark.parametrize(("case", "spoil", "field"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_row_rejects_the_whole_body(http: httpx.Client, case: str, spoil: Any, field: str) -> None:
    streams = [unique("colbad") for _ in range(2)]
    for s in streams:
        create(http, s, LINEAR)
    ids, x, y = _rows(8, 2, streams)
    before = {s: state_of(http, s, [0.1, 0.2, 0.3]) for s in streams}
    spoiled_ids, spoiled_x, spoiled_y = spoil(ids, x.tolist(), y.tolist())
    body = (
        json.dumps({"streams": spoiled_ids, "x": spoiled_x, "y": spoiled_y})
        .replace("NaN", "1e999")
        .replace("Infinity", "1e999")
    )
    response = http.post("/v1/observations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert {s: state_of(http, s, [0.1, 0.2, 0.3]) for s in streams} == before


def test_streams_of_different_shapes_are_refused(http: httpx.Client) -> None:
    lin, ar = unique("collin"), unique("colar")
    create(http, lin, LINEAR)
    create(http, ar, AR)
    response = http.post(
        "/v1/observations", json={"streams": [lin, ar], "x": [[1, 2, 3], [1, 2, 3]], "y": [1, 2]}
    )
    assert_error(response, 422, "invalid_input", field="streams[1]", stream=ar)
    both = {"observations": [], "streams": [lin], "x": [[1, 2, 3]], "y": [1]}
    assert_error(http.post("/v1/observations", json=both), 422, "invalid_input", field="streams")


async def _ws_columns(server: TrackinServer, frames: list[bytes | str]) -> list[dict[str, Any]]:
    async with connect(server.ws_url, open_timeout=10, close_timeout=5) as ws:
        for frame in frames:
            await ws.send(frame)
        out = []
        for _ in frames:
            got = await asyncio.wait_for(ws.recv(), timeout=30)
            out.append(msgpack.unpackb(got) if isinstance(got, bytes) else json.loads(got))
        return out


def test_websocket_msgpack_buffers_and_json_columns(server: TrackinServer, http: httpx.Client) -> None:
    streams = [unique("colws") for _ in range(3)]
    for s in streams:
        create(http, s, LINEAR)
    ids, x, y = _rows(30, 3, streams)
    first = {
        "seq": 1,
        "streams": ids[:20],
        "x": x[:20].astype("<f8").tobytes(),
        "y": y[:20].astype("<f8").tobytes(),
    }
    second = {
        "seq": 2,
        "streams": ids[20:],
        "x": x[20:].astype("<f4").tobytes(),
        "y": y[20:].tolist(),
        "dtype": "f4",
    }
    third = json.dumps({"seq": 3, "streams": ids[:1], "x": [[1.0, 2.0, 3.0, 4.0]], "y": [0.0]})
    answers = asyncio.run(_ws_columns(server, [msgpack.packb(first), msgpack.packb(second), third]))
    assert [a["seq"] for a in answers] == [1, 2, 3]
    columns: dict[str, list[Any]] = {"step": [], "prediction": [], "loss": [], "applied": []}
    for a in answers[:2]:
        dtype = "<f4" if a["dtype"] == "f4" else "<f8"
        columns["step"] += np.frombuffer(a["step"], "<i8").tolist()
        columns["prediction"] += np.frombuffer(a["prediction"], dtype).tolist()
        columns["loss"] += np.frombuffer(a["loss"], dtype).tolist()
        columns["applied"] += [bool(v) for v in a["applied"]]
        assert a["skipped"] == []
        assert a["drift"] == []
    x_sent = np.concatenate([x[:20], x[20:].astype("<f4").astype(np.float64)])
    _check({**columns, "skipped": [], "drift": []}, ids, x_sent, y)
    assert answers[2]["error"]["field"] == "x[0]"  # 4 values for 3 inputs: refused, connection open
