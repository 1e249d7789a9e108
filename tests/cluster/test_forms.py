"""The columnar form, pipelined WebSocket messages and a multi-stream request one of whose partitions cannot
be logged, in cluster mode: each through any replica, equal to a single node fed the same observations."""

from __future__ import annotations

import random
from typing import Any

import httpx
import msgspec
import nats
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.cluster import SPEC, Cluster, Load, check_against_reference, create_streams, partition

pytestmark = pytest.mark.slow


def _columns_of(load: Load, streams: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A columnar body naming ``streams`` (in that order) and its rows as observations."""
    rows = [load.observation() for _ in streams]
    body = {"streams": streams, "x": [r["x"] for r in rows], "y": [r["y"] for r in rows]}
    return body, rows


def _acknowledge(load: Load, streams: list[str], rows: list[dict[str, Any]], answer: dict[str, Any]) -> None:
    """Record a columnar answer's rows as answered observations."""
    for i, (stream, row) in enumerate(zip(streams, rows, strict=True)):
        log = load.logs[stream]
        log.answers.append(
            (len(log.acked), {"step": answer["step"][i], "prediction": answer["prediction"][i]})
        )
        log.acked.append(row)


def test_columnar_bodies_through_any_replica(cluster: Cluster) -> None:
    streams = create_streams(cluster, "col", 10)
    assert len({partition(s) for s in streams}) > 3
    load, rng = Load(streams, seed=11, headers=cluster.headers), random.Random(11)
    urls = [r.url for r in cluster.live()]
    with httpx.Client(timeout=30, headers=cluster.headers) as http:
        for _ in range(3):
            named = streams + streams[:4]
            rng.shuffle(named)
            body, rows = _columns_of(load, named)
            answer = http.post(f"{rng.choice(urls)}/v1/observations", json=body)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert set(got) == {"step", "prediction", "loss", "applied", "skipped", "drift"}, got
            assert len(got["step"]) == len(named)
            assert all(got["applied"])
            _acknowledge(load, named, rows, got)
        steps = {s: len(load.logs[s].acked) for s in streams}
        # A bad row refuses the whole body, named by its index in the request, whichever owner checked it.
        bce = next(f"col-bce-{i}" for i in range(99) if partition(f"col-bce-{i}") != partition(streams[0]))
        assert http.put(f"{urls[0]}/v1/streams/{bce}", json={**SPEC, "loss": "bce"}).status_code == 201
        named = [*streams[:6], bce, *streams[6:]]
        body, _ = _columns_of(load, named)
        body["y"][6] = 2.0  # outside [0, 1]: refused by the bce stream's owner, its row named in the request
        refused = http.post(f"{urls[1 % len(urls)]}/v1/observations", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "y[6]", refused.text
        body, _ = _columns_of(load, [*streams[:5], "col-nope", *streams[5:]])
        assert http.post(f"{urls[-1]}/v1/observations", json=body).status_code == 404
        # Streams of another shape, in another partition than the first row's: refused as single-node does.
        odd = next(f"col-odd-{i}" for i in range(99) if partition(f"col-odd-{i}") != partition(streams[0]))
        spec = {"model": {"family": "linear", "in_dim": 2}}
        assert http.put(f"{urls[0]}/v1/streams/{odd}", json=spec).status_code == 201
        body, _ = _columns_of(load, [*streams[:3], odd])
        refused = http.post(f"{urls[0]}/v1/observations", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "streams[3]", refused.text
        both = {"observations": [], "streams": streams[:1], "x": [[0, 0, 0]], "y": [0]}
        assert http.post(f"{urls[0]}/v1/observations", json=both).json()["error"]["field"] == "streams"
    check_against_reference(cluster, load)  # nothing of the refused bodies was applied
    assert {s: len(load.logs[s].acked) for s in streams} == steps


async def test_websocket_messages_are_pipelined_and_answered_in_order(cluster: Cluster) -> None:
    """Many messages sent before any answer is read, rows and columns, JSON and MessagePack: each answered
    in order, every observation applied once in the order sent (each stream's messages span partitions)."""
    streams = create_streams(cluster, "pipe", 8)
    load, rng = Load(streams, seed=12, headers=cluster.headers), random.Random(12)
    server = cluster.live()[0]
    sent: list[tuple[int, bool, bool, list[str], list[dict[str, Any]]]] = []
    async with connect(server.ws_url, additional_headers=cluster.headers, open_timeout=10) as ws:
        for seq in range(40):
            named = [rng.choice(streams) for _ in range(6)]
            binary, columnar = seq % 3 == 0, seq % 4 == 1
            if columnar:
                frame, rows = _columns_of(load, named)
                frame = {"seq": seq, **frame}
            else:
                rows = [load.observation() for _ in named]
                frame = {
                    "seq": seq,
                    "observations": [{"stream": s, **r} for s, r in zip(named, rows, strict=True)],
                }
            if seq == 20:  # a bad message among them: answered in its place, nothing of it applied
                frame = {"seq": seq, "observations": [{"stream": streams[0], "x": [1.0], "y": 0.0}]}
            await ws.send(msgspec.msgpack.encode(frame) if binary else orjson.dumps(frame).decode())
            sent.append((seq, binary, columnar, named, rows))
        for seq, binary, columnar, named, rows in sent:
            raw = await ws.recv()
            assert isinstance(raw, bytes) == binary
            answer = msgspec.msgpack.decode(raw) if isinstance(raw, bytes) else orjson.loads(raw)
            assert answer["seq"] == seq, answer
            if seq == 20:
                assert answer["error"]["field"].startswith("observations[0].x"), answer
                continue
            if columnar:
                if binary:
                    floats = "<f4" if answer["dtype"] == "f4" else "<f8"
                    answer = {
                        "step": np.frombuffer(answer["step"], "<i8").tolist(),
                        "prediction": np.frombuffer(answer["prediction"], floats).tolist(),
                    }
                _acknowledge(load, named, rows, answer)
            else:
                assert [r["stream"] for r in answer["results"]] == named
                _acknowledge(
                    load,
                    named,
                    rows,
                    {
                        "step": [r["step"] for r in answer["results"]],
                        "prediction": [r["prediction"] for r in answer["results"]],
                    },
                )
        # An unparsable frame closes the connection, after the answers before it.
        extra = load.observation()
        frame = {"seq": 99, "observations": [{"stream": streams[1], **extra}]}
        await ws.send(orjson.dumps(frame).decode())
        await ws.send("{not json")
        answer = orjson.loads(await ws.recv())
        assert answer["seq"] == 99, answer
        result = answer["results"][0]
        _acknowledge(
            load, [streams[1]], [extra], {"step": [result["step"]], "prediction": [result["prediction"]]}
        )
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1007
    check_against_reference(cluster, load)


async def test_a_part_that_cannot_be_logged_fails_alone_and_says_what_is_durable(cluster: Cluster) -> None:
    """One partition's publish is refused (its part exceeds the log's message size, set for the test):
    the answer is that part's 503, ``durable`` lists the other parts' items, applied once with their
    results given; nothing of the refused part is applied."""
    streams = create_streams(cluster, "part", 12)
    big = streams[0]
    small = [s for s in streams if partition(s) != partition(big)][:5]
    load = Load(streams, seed=13, headers=cluster.headers)
    items = [{"stream": big, **load.observation()} for _ in range(40)]
    items[3:3] = [{"stream": s, **load.observation()} for s in small]
    nc = await nats.connect(cluster.nats.url)
    js = nc.jetstream()
    info = await js.stream_info("trackin-log")
    config = info.config
    limit = config.max_msg_size
    try:
        config.max_msg_size = 1200  # the big part's ~2 kB are refused, the others' ~0.1 kB are not
        await js.update_stream(config)
        async with httpx.AsyncClient(timeout=30, headers=cluster.headers) as http:
            answer = await http.post(f"{cluster.live()[1].url}/v1/observations", json=items)
    finally:
        config.max_msg_size = limit
        await js.update_stream(config)
        await nc.close()
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    body = answer.json()
    assert body["error"]["code"] == "unavailable", body
    assert body["durable"] == list(range(3, 3 + len(small))), body
    for i, (item, result) in enumerate(zip(items, body["results"], strict=True)):
        if i in body["durable"]:
            assert result["stream"] == item["stream"]
            log = load.logs[item["stream"]]
            log.answers.append((len(log.acked), result))
            log.acked.append({"x": item["x"], "y": item["y"]})
        else:
            assert result is None
    check_against_reference(cluster, load)  # the big stream: 0 steps
