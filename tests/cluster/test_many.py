"""``POST /v1/observations`` and the WebSocket in cluster mode: a request (or message) naming streams of many
partitions is checked as a whole by their owners (nothing applied on a bad item, the item named by its index
in the request), then logged per partition, and answered in request order; equal to a single node fed the
same observations."""

from __future__ import annotations

import random

import httpx
import msgspec
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.cluster import Cluster, Load, bearer, check_against_reference, create_streams, partition

pytestmark = pytest.mark.slow


def test_many_streams_in_one_request_through_any_replica(cluster: Cluster) -> None:
    streams = create_streams(cluster, "many", 12)
    assert len({partition(s) for s in streams}) > 3  # the requests span several partitions
    load, rng = Load(streams, seed=6, headers=cluster.headers), random.Random(6)
    urls = [r.url for r in cluster.live()]
    with httpx.Client(timeout=30, headers=cluster.headers) as http:
        for _ in range(3):
            named = streams + streams  # each stream twice in one request, in a shuffled order
            rng.shuffle(named)
            items = [{"stream": s, **load.observation()} for s in named]
            answer = http.post(f"{rng.choice(urls)}/v1/observations", json={"observations": items})
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            assert [r["stream"] for r in results] == named
            for item, result in zip(items, results, strict=True):
                log = load.logs[item["stream"]]
                log.answers.append((len(log.acked), result))
                log.acked.append({"x": item["x"], "y": item["y"]})
        steps = {s: len(load.logs[s].acked) for s in streams}
        # A bad item anywhere refuses the whole request, named by its index, whichever owner checked it.
        good = [{"stream": s, **load.observation()} for s in streams]
        for k, bad, field, status in (
            (7, {"stream": streams[7], "x": [1.0], "y": 0.0}, "observations[7].x", 422),
            (5, {"stream": "many-nope", "x": [0, 0, 0], "y": 0.0}, None, 404),
            (3, {"x": [0, 0, 0], "y": 0.0}, "observations[3].stream", 422),
        ):
            body = {"observations": [*good[:k], bad, *good[k + 1 :]]}
            refused = http.post(f"{rng.choice(urls)}/v1/observations", json=body)
            assert refused.status_code == status, refused.text
            if field is not None:
                assert refused.json()["error"]["field"].startswith(field), refused.text
        assert http.post(f"{urls[0]}/v1/observations", json=[]).status_code == 422
    check_against_reference(cluster, load)  # nothing of the refused requests was applied
    assert {s: len(load.logs[s].acked) for s in streams} == steps


def test_many_streams_stay_in_the_callers_namespace(cluster: Cluster) -> None:
    alpha, beta = bearer(cluster.keys["alpha"]), bearer(cluster.keys["beta"])
    one, two = (r.url for r in cluster.live()[:2])
    spec = {"model": {"family": "linear", "in_dim": 2}}
    with httpx.Client(timeout=10) as http:
        for name in ("m1", "m2"):
            assert http.put(f"{one}/v1/streams/{name}", json=spec, headers=alpha).status_code == 201
        items = [{"stream": s, "x": [0.5, -0.5], "y": 1.0} for s in ("m1", "m2", "m1")]
        answer = http.post(f"{two}/v1/observations", json=items, headers=alpha)
        assert answer.status_code == 200, answer.text
        steps = [(r["stream"], r["step"]) for r in answer.json()["results"]]
        assert steps == [("m1", 1), ("m2", 1), ("m1", 2)]
        assert http.post(f"{two}/v1/observations", json=items, headers=beta).status_code == 404
        sneaky = [{"stream": "~alpha/m1", "x": [0.5, -0.5], "y": 1.0}]
        assert http.post(f"{one}/v1/observations", json=sneaky, headers=beta).status_code == 422
        assert http.get(f"{one}/v1/streams/m1", headers=alpha).json()["figures"]["steps"] == 2


async def test_websocket_frames_through_any_replica(cluster: Cluster) -> None:
    streams = create_streams(cluster, "ws", 8)
    load, rng = Load(streams, seed=8, headers=cluster.headers), random.Random(8)
    server = cluster.live()[1]
    async with connect(server.ws_url, additional_headers=cluster.headers, open_timeout=10) as ws:
        for seq in range(4):
            named = [rng.choice(streams) for _ in range(10)]
            items = [{"stream": s, **load.observation()} for s in named]
            binary = seq == 3
            frame = {"seq": seq, "observations": items}
            await ws.send(msgspec.msgpack.encode(frame) if binary else orjson.dumps(frame).decode())
            raw = await ws.recv()
            answer = msgspec.msgpack.decode(raw) if binary else orjson.loads(raw)
            assert isinstance(raw, bytes) == binary
            assert answer["seq"] == seq, answer
            assert [r["stream"] for r in answer["results"]] == named
            for item, result in zip(items, answer["results"], strict=True):
                log = load.logs[item["stream"]]
                log.answers.append((len(log.acked), result))
                log.acked.append({"x": item["x"], "y": item["y"]})
        # A bad message is answered with its error, nothing of it applied, and the connection stays open.
        bad = [{"stream": streams[0], **load.observation()}, {"stream": streams[1], "x": [1.0], "y": 0.0}]
        await ws.send(orjson.dumps({"seq": 9, "observations": bad}).decode())
        refused = orjson.loads(await ws.recv())
        assert refused["seq"] == 9, refused
        assert refused["error"]["field"].startswith("observations[1].x"), refused
        await ws.send(orjson.dumps({"seq": 10, "observations": []}).decode())
        assert orjson.loads(await ws.recv())["error"]["field"] == "observations"
    check_against_reference(cluster, load)
    # The handshake is guarded as single-node's: a key, and an allowed Origin.
    with pytest.raises(InvalidStatus) as missing:
        await connect(server.ws_url, open_timeout=10)
    assert missing.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as evil:
        await connect(server.ws_url, additional_headers=cluster.headers, origin="http://evil.example")
    assert evil.value.response.status_code == 403
    # A tenant's key offered as the subprotocol: echoed, and the tenant's own streams named as it names them.
    alpha = cluster.keys["alpha"]
    spec = {"model": {"family": "linear", "in_dim": 2}}
    created = httpx.put(f"{server.url}/v1/streams/w1", json=spec, headers=bearer(alpha), timeout=10)
    assert created.status_code == 201, created.text
    offered = f"trackin.bearer.{alpha}"
    async with connect(server.ws_url, subprotocols=[offered], open_timeout=10) as ws:
        assert ws.subprotocol == offered
        frame = {"seq": 1, "observations": [{"stream": "w1", "x": [1, 2], "y": 3}]}
        await ws.send(orjson.dumps(frame).decode())
        assert orjson.loads(await ws.recv())["results"][0]["stream"] == "w1"
