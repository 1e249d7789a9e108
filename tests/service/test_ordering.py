"""One step per arrival, in arrival order, across concurrent REST clients and WebSocket connections.

Several clients hit one stream at once, each with its own connection. Every observation must get its own
step number, each client's observations must be stepped in the order it sent them, and the count must add
up. Then the observations, sorted by the step numbers the server gave them, are replayed through an
in-process engine: every served prediction and loss must come out again. Since each observation has
different inputs, a skipped, doubled or reordered step would change every later prediction.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.service import LINEAR, Reference, assert_results_match, unique
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(120)

Sent = list[tuple[dict[str, Any], dict[str, Any]]]  # (observation, its result), in the client's send order


def observation(rng: random.Random) -> dict[str, Any]:
    x = [rng.uniform(-1, 1) for _ in range(3)]
    return {"x": x, "y": 0.5 * x[0] - x[1] + rng.gauss(0, 0.1)}


def batches(rng: random.Random, count: int) -> list[list[dict[str, Any]]]:
    return [[observation(rng) for _ in range(rng.randint(1, 3))] for _ in range(count)]


async def rest_client(url: str, sid: str, seed: int, requests: int) -> Sent:
    """Sends one request at a time (single objects and lists), each after the previous answer."""
    rng = random.Random(seed)
    sent: Sent = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for batch in batches(rng, requests):
            body: Any = batch[0] if len(batch) == 1 and rng.random() < 0.5 else batch
            response = await http.post(f"/v1/streams/{sid}/observations", json=body)
            assert response.status_code == 200, response.text
            sent.extend(zip(batch, response.json()["results"], strict=True))
            await asyncio.sleep(rng.random() * 0.002)
    return sent


async def many_streams_client(url: str, sid: str, other: str, seed: int, requests: int) -> Sent:
    """Uses POST /v1/observations, mixing in another stream's observations."""
    rng = random.Random(seed)
    sent: Sent = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for batch in batches(rng, requests):
            items = [{**o, "stream": sid} for o in batch]
            items.insert(rng.randint(0, len(items)), {**observation(rng), "stream": other})
            response = await http.post("/v1/observations", json={"observations": items})
            assert response.status_code == 200, response.text
            for item, result in zip(items, response.json()["results"], strict=True):
                assert result["stream"] == item["stream"]
                if item["stream"] == sid:
                    sent.append(({"x": item["x"], "y": item["y"]}, result))
    return sent


async def ws_client(ws_url: str, sid: str, seed: int, messages: int) -> Sent:
    """Sends every message at once (pipelined), then reads the answers."""
    rng = random.Random(seed)
    planned = batches(rng, messages)
    sent: Sent = []
    async with connect(ws_url, open_timeout=10) as ws:
        for seq, batch in enumerate(planned):
            await ws.send(json.dumps({"seq": seq, "observations": [{**o, "stream": sid} for o in batch]}))
            if rng.random() < 0.2:
                await asyncio.sleep(0.001)
        for seq, batch in enumerate(planned):
            answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            assert answer["seq"] == seq, answer
            sent.extend(zip(batch, answer["results"], strict=True))
    return sent


def check_order(clients: list[Sent], final_steps: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Distinct steps 1..N, increasing per client, N == the stream's count; all items by step."""
    everything = [pair for sent in clients for pair in sent]
    steps = [result["step"] for _, result in everything]
    assert sorted(steps) == list(range(1, len(everything) + 1)), "every observation has its own step"
    assert final_steps == len(everything)
    for i, sent in enumerate(clients):
        mine = [result["step"] for _, result in sent]
        assert mine == sorted(mine), f"client {i} stepped out of its send order: {mine}"
    return sorted(everything, key=lambda pair: pair[1]["step"])


def interleaved(clients: list[Sent]) -> bool:
    """Some two clients' step ranges overlap: the requests really were concurrent."""
    spans = [(min(r["step"] for _, r in s), max(r["step"] for _, r in s)) for s in clients if s]
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


async def final_steps(url: str, sid: str) -> int:
    async with httpx.AsyncClient(base_url=url) as http:
        count: int = (await http.get(f"/v1/streams/{sid}")).json()["figures"]["steps"]
        return count


async def test_concurrent_rest_and_websocket_clients_on_one_stream(server: TrackinServer) -> None:
    sid, other = unique("order"), unique("other")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for s in (sid, other):
            assert (await http.put(f"/v1/streams/{s}", json=LINEAR)).status_code == 201
    clients = await asyncio.gather(
        *(rest_client(server.url, sid, seed, requests=15) for seed in range(4)),
        many_streams_client(server.url, sid, other, seed=10, requests=10),
        *(ws_client(server.ws_url, sid, seed, messages=25) for seed in range(20, 23)),
    )
    by_step = check_order(list(clients), await final_steps(server.url, sid))
    assert interleaved(list(clients))
    expected = Reference(LINEAR).observe_all([obs for obs, _ in by_step])
    assert_results_match([result for _, result in by_step], expected)


async def test_first_observations_racing_through_a_template_create_one_stream(server: TrackinServer) -> None:
    prefix = unique("race") + ":"
    sid = f"{prefix}1"
    async with httpx.AsyncClient(base_url=server.url) as http:
        template = {"prefix": prefix, "spec": LINEAR, "idle_seconds": 60}
        assert (await http.put(f"/v1/templates/{unique('tpl')}", json=template)).status_code == 201
    clients = await asyncio.gather(
        *(rest_client(server.url, sid, seed, requests=3) for seed in range(6)),
        *(ws_client(server.ws_url, sid, seed, messages=3) for seed in range(30, 33)),
    )
    by_step = check_order(list(clients), await final_steps(server.url, sid))
    expected = Reference(LINEAR).observe_all([obs for obs, _ in by_step])
    assert_results_match([result for _, result in by_step], expected)
