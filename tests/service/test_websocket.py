"""WebSocket /v1/ws: JSON and MessagePack frames, answers in order per message, errors that keep the
connection open, close codes for protocol abuse, and backpressure without loss or reordering."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.service import AR, LINEAR, Reference, assert_close, assert_results_match, check_error_body, unique
from tests.service.conftest import LIMITS_ENV
from tests.support.backpressure import check_backpressure
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(90)


async def ws_connect(server: TrackinServer, **kwargs: Any) -> ClientConnection:
    return await connect(server.ws_url, open_timeout=10, close_timeout=5, **kwargs)


async def create(url: str, specs: dict[str, dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        for sid, spec in specs.items():
            response = await http.put(f"/v1/streams/{sid}", json=spec)
            assert response.status_code == 201, response.text


async def steps(url: str, sid: str) -> int:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get(f"/v1/streams/{sid}")
        assert response.status_code == 200, response.text
        value: int = response.json()["figures"]["steps"]
        return value


async def answer(ws: ClientConnection) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), timeout=30)
    decoded: dict[str, Any] = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
    return decoded


def items_for(lin: str, ar: str, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    level = 0.0
    for _ in range(n):
        if rng.random() < 0.5:
            x = [rng.uniform(-1, 1) for _ in range(3)]
            out.append({"stream": lin, "x": x, "y": sum(x) + rng.gauss(0, 0.1)})
        else:
            level += rng.gauss(0, 1)
            out.append({"stream": ar, "value": [level, -level]})
    return out


def split(items: list[dict[str, Any]], seed: int) -> list[list[dict[str, Any]]]:
    """Messages of 1 to 4 observations."""
    rng = random.Random(seed)
    messages, i = [], 0
    while i < len(items):
        k = rng.randint(1, 4)
        messages.append(items[i : i + k])
        i += k
    return messages


def check_against_engine(
    items: list[dict[str, Any]], results: list[dict[str, Any]], lin: str, ar: str
) -> None:
    assert [r["stream"] for r in results] == [o["stream"] for o in items]
    for sid, spec in ((lin, LINEAR), (ar, AR)):
        mine = [o for o in items if o["stream"] == sid]
        served = [r for r in results if r["stream"] == sid]
        assert_results_match(served, Reference(spec).observe_all(mine))


@pytest.fixture
async def streams(server: TrackinServer) -> tuple[str, str]:
    lin, ar = unique("lin"), unique("ar")
    await create(server.url, {lin: LINEAR, ar: AR})
    return lin, ar


@pytest.mark.parametrize("encoding", ["json", "msgpack", "mixed"])
async def test_pipelined_messages_answered_in_order(
    server: TrackinServer, streams: tuple[str, str], encoding: str
) -> None:
    lin, ar = streams
    items = items_for(lin, ar, 80, seed=1)
    messages = split(items, seed=2)
    binary = [encoding == "msgpack" or (encoding == "mixed" and i % 2 == 1) for i in range(len(messages))]
    async with await ws_connect(server) as ws:
        for seq, (message, as_bytes) in enumerate(zip(messages, binary, strict=True)):
            body = {"seq": seq, "observations": message}
            await ws.send(msgpack.packb(body) if as_bytes else json.dumps(body))
        results: list[dict[str, Any]] = []
        for seq, (message, as_bytes) in enumerate(zip(messages, binary, strict=True)):
            frame = await asyncio.wait_for(ws.recv(), timeout=30)
            assert isinstance(frame, bytes) == as_bytes, "answered in the frame type of the message"
            got = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
            assert got["seq"] == seq
            assert len(got["results"]) == len(message)
            results.extend(got["results"])
    check_against_engine(items, results, lin, ar)


async def test_bad_messages_get_errors_and_the_connection_stays_open(
    server: TrackinServer, streams: tuple[str, str]
) -> None:
    lin, ar = streams
    good: list[dict[str, Any]] = [
        {"stream": lin, "x": [1, 2, 3], "y": 1.0},
        {"stream": ar, "value": [1.0, 2.0]},
    ]
    sent_good: list[dict[str, Any]] = []
    unknown = unique("missing")
    # (frame, expected seq, code, field, stream); None for a good message.
    script: list[tuple[Any, Any, str | None, str | None, str | None]] = [
        ({"seq": 1, "observations": good}, 1, None, None, None),
        ({"seq": 2, "observations": [good[0], {"stream": lin, "x": [1], "y": 1}]}, 2, "invalid_input",
         "observations[1].x", lin),
        ({"seq": 3, "observations": [good[1], {"stream": unknown, "value": [1, 2]}]}, 3, "unknown_stream",
         None, unknown),
        ({"seq": 4, "observations": [{**good[0], "z": 1}]}, 4, "invalid_input", "observations[0].z", lin),
        ({"seq": 5, "observations": [good[0], {"stream": lin, "x": [1, True, 3], "y": 1}]}, 5,
         "invalid_input", "observations[1].x[1]", lin),
        ('{"seq": 6, "observations": [{"stream": "' + ar + '", "value": [1, 1e999]}]}', 6, "invalid_input",
         "observations[0].value[1]", None),
        ({"seq": 7, "observations": []}, 7, "invalid_input", "observations", None),
        ({"observations": good}, None, "invalid_input", "seq", None),
        ({"seq": "eight", "observations": good}, "eight", "invalid_input", "seq", None),
        ([1, 2, 3], None, "invalid_input", None, None),
        ({"seq": 9, "observations": [good[0], {"x": [1, 2, 3], "y": 1}]}, 9, "invalid_input",
         "observations[1].stream", None),
        ({"seq": 10, "observations": [{"stream": "bad id", "x": [1, 2, 3], "y": 1}]}, 10,
         "invalid_stream_id", "observations[0].stream", None),
        ({"seq": 11, "observations": [{"stream": lin, "x": [1, 2, 3], "y": "NaN"}]}, 11, "invalid_input",
         "observations[0].y", lin),
        ({"seq": 12, "observations": good}, 12, None, None, None),
    ]  # fmt: skip
    async with await ws_connect(server) as ws:
        for i, (frame, seq, code, field, stream) in enumerate(script):
            as_bytes = i % 2 == 1 and not isinstance(frame, str)
            if isinstance(frame, str):
                await ws.send(frame)
            else:
                await ws.send(msgpack.packb(frame) if as_bytes else json.dumps(frame))
            got = await answer(ws)
            assert got.get("seq") == seq, got
            if code is None:
                assert "results" in got, got
                sent_good.extend(frame["observations"])
                continue
            assert "results" not in got, got
            error = check_error_body(got, code, field=field, stream=stream)
            if field is None:  # a message that is not an object at all: just say so
                assert error["message"]
    # Only the good messages were applied: step counts, and parameters (a prediction from them).
    assert await steps(server.url, lin) == 2
    assert await steps(server.url, ar) == 1  # two values: the second is the first one scored
    reference = Reference(LINEAR)
    reference.observe_all([o for o in sent_good if o["stream"] == lin])
    probe = [0.5, -1.0, 2.0]
    async with httpx.AsyncClient(base_url=server.url) as http:
        predicted = (await http.post(f"/v1/streams/{lin}/predict", json={"x": probe})).json()["prediction"]
    assert_close(predicted, reference.predict(probe), "prediction after the rejected messages")


@pytest.mark.parametrize("frame", ["{not json", b"\xc1\xc1\xc1", "", b""])
async def test_unparsable_frame_closes_with_1007(server: TrackinServer, frame: str | bytes) -> None:
    async with await ws_connect(server) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await answer(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007


@pytest.mark.parametrize("size", [3000, 20_000])
async def test_oversized_frame_closes_with_1009(limits_server: TrackinServer, size: int) -> None:
    """The limits server takes messages of at most 2048 bytes: just over (the app's check) and far over
    (the protocol's frame limit) both close with 1009."""
    lin = unique("lin")
    await create(limits_server.url, {lin: LINEAR})
    padding = [{"stream": lin, "x": [1.0, 2.0, 3.0], "y": 1.0}] * (size // 40)
    async with await ws_connect(limits_server) as ws:
        await ws.send(json.dumps({"seq": 1, "observations": [{"stream": lin, "x": [1, 2, 3], "y": 1.0}]}))
        first = await answer(ws)
        assert first["seq"] == 1
        message = json.dumps({"seq": 2, "observations": padding})
        assert len(message) > 2048
        await ws.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            await answer(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    assert await steps(limits_server.url, lin) == 1


async def test_too_many_observations_in_a_message_is_an_error(limits_server: TrackinServer) -> None:
    lin = unique("lin")
    await create(limits_server.url, {lin: LINEAR})
    item = {"stream": lin, "x": [1, 2, 3], "y": 1}
    async with await ws_connect(limits_server) as ws:
        await ws.send(json.dumps({"seq": 1, "observations": [item] * 21}))
        check_error_body(await answer(ws), "payload_too_large", field="observations")
        await ws.send(json.dumps({"seq": 2, "observations": [item] * 20}))
        assert len((await answer(ws))["results"]) == 20
    assert await steps(limits_server.url, lin) == 20


async def test_messages_before_a_protocol_error_are_answered(server: TrackinServer) -> None:
    """What was accepted before the abuse is answered before the close frame."""
    lin = unique("lin")
    await create(server.url, {lin: LINEAR})
    async with await ws_connect(server) as ws:
        for seq in range(20):
            body = {"seq": seq, "observations": [{"stream": lin, "x": [0.1, 0.2, seq / 20], "y": 1.0}] * 5}
            await ws.send(json.dumps(body))
        await ws.send("{garbage")
        seqs = [(await answer(ws))["seq"] for _ in range(20)]
        with pytest.raises(ConnectionClosed) as closed:
            await answer(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007
    assert seqs == list(range(20))
    assert await steps(server.url, lin) == 100


IN_FLIGHT = 2  # TRACKIN_MAX_WS_IN_FLIGHT of the limits server


@pytest.fixture(scope="module")
def weighed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackinServer]:
    """A server bounding what is in flight by its weight only: 1,024 bytes of frames (with messages of
    about 990 bytes: two read unanswered at most, as ``IN_FLIGHT``), thousands of messages."""
    env = {**LIMITS_ENV, "TRACKIN_MAX_WS_IN_FLIGHT": "10000", "TRACKIN_MAX_WS_IN_FLIGHT_BYTES": "1024"}
    with TrackinServer(tmp_path_factory.mktemp("weighed"), env=env) as started:
        yield started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bound_by", ["messages", "bytes"])
async def test_backpressure_stops_reading_and_loses_nothing(
    request: pytest.FixtureRequest, bound_by: str
) -> None:
    """A client that sends without reading: the server (2 messages in flight, by their count or by their
    bytes) stops reading once the answers back up, and loses and reorders nothing
    (tests/support/backpressure.py says how the bound is measured)."""
    limits_server: TrackinServer = request.getfixturevalue(
        "limits_server" if bound_by == "messages" else "weighed_server"
    )
    await check_backpressure(limits_server, IN_FLIGHT)


def open_connections(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for line in text.splitlines():
        if line.startswith("trackin_websocket_connections_open "):
            return float(line.split()[1])
    raise AssertionError("trackin_websocket_connections_open not exported")


async def test_client_vanishing_with_answers_pending_frees_the_connection(
    limits_server: TrackinServer,
) -> None:
    """A client that sends a burst and drops the TCP connection without reading: the handler must not
    stay blocked behind answers nobody will read (2 in flight on this server)."""
    lin = unique("lin")
    await create(limits_server.url, {lin: LINEAR})
    baseline = await asyncio.to_thread(open_connections, limits_server.url)
    for _ in range(3):
        ws = await ws_connect(limits_server)
        for seq in range(60):
            await ws.send(
                json.dumps({"seq": seq, "observations": [{"stream": lin, "x": [0.1, 0.2, 0.3], "y": 1}]})
            )
        ws.transport.abort()  # gone without a close frame, answers unread
        await ws.wait_closed()
    deadline = asyncio.get_running_loop().time() + 30
    while await asyncio.to_thread(open_connections, limits_server.url) > baseline:
        assert asyncio.get_running_loop().time() < deadline, (
            "WebSocket handlers still open after their clients left"
        )
        await asyncio.sleep(0.1)
