"""WebSocket frames read back to back are queued as one engine batch (service/transport/ws.py, `_Group`):
each frame is still answered on its own, in order, with the results it would have had alone, and a bad
frame in the middle of a group gets its own error (fields named as in that frame) and changes nothing.

The frames go out in ONE write over a raw connection (bench/wsclient.py), so the server's reader finds
them all buffered at once and groups them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bench.wsclient import LeanWebSocket, encode_frame
from tests.service import AR, LINEAR, Reference, assert_results_match, check_error_body, unique
from tests.service.test_websocket import create, items_for, split, steps
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(90)


async def burst(server: TrackinServer, bodies: list[Any]) -> list[dict[str, Any]]:
    """Send every body as a text frame in one write; the answers, in the order they came."""
    host, port = server.url.removeprefix("http://").split(":")
    ws = await LeanWebSocket.connect(host, int(port))
    try:
        ws.writer.write(b"".join(encode_frame(json.dumps(b).encode(), binary=False) for b in bodies))
        return [json.loads(await ws.receive()) for _ in bodies]
    finally:
        await ws.close()


async def test_a_burst_of_frames_is_answered_in_order_as_if_each_came_alone(server: TrackinServer) -> None:
    lin, ar = unique("lin"), unique("ar")
    await create(server.url, {lin: LINEAR, ar: AR})
    items = items_for(lin, ar, 120, seed=5)
    messages = split(items, seed=6)  # 1 to 4 observations each, both streams interleaved
    answers = await burst(server, [{"seq": k, "observations": m} for k, m in enumerate(messages)])
    assert [a["seq"] for a in answers] == list(range(len(messages)))
    results: list[dict[str, Any]] = []
    for message, got in zip(messages, answers, strict=True):
        assert [r["stream"] for r in got["results"]] == [o["stream"] for o in message], got
        results.extend(got["results"])
    for sid, spec in ((lin, LINEAR), (ar, AR)):
        served = [r for r in results if r["stream"] == sid]
        assert_results_match(served, Reference(spec).observe_all([o for o in items if o["stream"] == sid]))


@pytest.mark.parametrize("refused", [False, True], ids=["errors-at-decode", "group-refused"])
async def test_a_bad_frame_inside_a_burst_gets_its_own_error_and_changes_nothing(
    server: TrackinServer, refused: bool
) -> None:
    """``errors-at-decode``: the bad frames fail before grouping and the rest go as one batch;
    ``group-refused``: a frame fails the group's check (a wrong width, an unknown stream), so the group is
    queued again frame by frame."""
    lin, ar = unique("lin"), unique("ar")
    await create(server.url, {lin: LINEAR, ar: AR})
    good = items_for(lin, ar, 60, seed=7)
    missing = unique("missing")
    # (observations, code, field, stream)
    bad: list[tuple[list[dict[str, Any]], str, str | None, str | None]] = [
        ([{**good[0], "z": 1}], "invalid_input", "observations[0].z", good[0]["stream"]),
        ([], "invalid_input", "observations", None),
    ]
    if refused:
        bad += [
            ([good[1], {"stream": lin, "x": [1.0], "y": 1.0}], "invalid_input", "observations[1].x", lin),
            ([{"stream": missing, "value": [1.0, 2.0]}], "unknown_stream", None, missing),
        ]
    bodies: list[dict[str, Any]] = []
    expected: list[tuple[str, str | None, str | None] | None] = []
    applied: list[dict[str, Any]] = []
    for k, message in enumerate(split(good, seed=8)):
        if k % 4 == 2 and bad:
            observations, code, field, stream = bad.pop(0)
            bodies.append({"seq": len(bodies), "observations": observations})
            expected.append((code, field, stream))
        bodies.append({"seq": len(bodies), "observations": message})
        expected.append(None)
        applied.extend(message)
    assert not bad, "every bad frame sits between good ones"
    answers = await burst(server, bodies)
    assert [a["seq"] for a in answers] == list(range(len(bodies)))
    results: list[dict[str, Any]] = []
    for body, want, got in zip(bodies, expected, answers, strict=True):
        if want is None:
            assert len(got["results"]) == len(body["observations"]), got
            results.extend(got["results"])
        else:
            check_error_body(got, want[0], field=want[1], stream=want[2])
    for sid, spec in ((lin, LINEAR), (ar, AR)):
        mine = [o for o in applied if o["stream"] == sid]
        served = [r for r in results if r["stream"] == sid]
        assert_results_match(served, Reference(spec).observe_all(mine))
    # only the good frames were applied (the refused group's wrong-width frame named a good item too)
    assert await steps(server.url, lin) == sum(o["stream"] == lin for o in applied)
    async with httpx.AsyncClient(base_url=server.url) as http:
        figures = (await http.get(f"/v1/streams/{ar}")).json()["figures"]
    assert figures["steps"] == sum(o["stream"] == ar for o in applied) - 1  # the first value is only scored
