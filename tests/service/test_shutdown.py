"""SIGTERM: stop accepting, answer everything already accepted (REST and WebSocket), then exit 0.

Each test starts its own server (it is stopped on purpose). The engine work is made long on purpose (a
few thousand steps of one MLP stream) so requests are still being worked on when the signal arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.service import unique
from tests.support.server import Servers, TrackinServer

pytestmark = pytest.mark.timeout(120)

MLP = {"model": {"family": "mlp", "in_dim": 8, "hidden": [32]}, "optimizer": {"name": "sgd", "lr": 0.01}}
ITEM = {"x": [0.1] * 8, "y": 0.5}


async def create(server: TrackinServer, sid: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.put(f"/v1/streams/{sid}", json=MLP)).status_code == 201


async def post_many(server: TrackinServer, sid: str, n: int) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        response = await http.post(f"/v1/streams/{sid}/observations", json=[ITEM] * n)
        return response, time.monotonic()


async def ws_session(server: TrackinServer, sid: str, messages: int, sent: asyncio.Event) -> list[Any]:
    """Sends every message, then reads until the server closes; the answers' seqs, then the close code."""
    out: list[Any] = []
    async with connect(server.ws_url, open_timeout=10) as ws:
        for seq in range(messages):
            await ws.send(json.dumps({"seq": seq, "observations": [{**ITEM, "stream": sid}] * 20}))
        sent.set()
        try:
            while True:
                answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                assert len(answer["results"]) == 20, answer
                out.append(answer["seq"])
        except ConnectionClosed as closed:
            out.append(closed.rcvd.code if closed.rcvd is not None else None)
    return out


async def accepted(server: TrackinServer) -> tuple[int, int]:
    """Observations the server has accepted (answered by the engine, or pending in it), and the pending."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    done = pending = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "trackin_observations_total" and sample.labels["outcome"] != "rejected":
                done += sample.value
            elif sample.name == "trackin_engine_pending_observations":
                pending = sample.value
    return int(done + pending), int(pending)


async def test_sigterm_answers_what_was_accepted_then_exits_0(servers: Servers) -> None:
    server = servers.start()
    sid = unique("busy")
    await create(server, sid)
    sent = asyncio.Event()
    rest = [asyncio.create_task(post_many(server, sid, 800)) for _ in range(5)]
    ws = asyncio.create_task(ws_session(server, sid, 10, sent))
    await sent.wait()
    # Every request read and queued (the engine has seconds of work left), however slow the machine.
    total = 5 * 800 + 10 * 20
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (progress := await accepted(server))[0] < total:
        assert loop.time() < deadline, f"accepted {progress[0]} of {total} observations"
        await asyncio.sleep(0.02)
    assert progress[1] > 0, "the engine finished before SIGTERM: the test would not exercise the shutdown"

    server.terminate()
    signalled = time.monotonic()
    deadline = loop.time() + 30
    while True:  # no longer accepting: refused as soon as the signal is handled
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                await http.get("/healthz")
        except httpx.ConnectError:
            break
        assert loop.time() < deadline, "still accepting connections 30 s after SIGTERM"
        await asyncio.sleep(0.05)

    answered = await asyncio.gather(*rest)
    for response, _ in answered:
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 800
    late = [t for _, t in answered if t > signalled]
    assert late, "every request finished before SIGTERM: the test did not exercise the shutdown"
    assert await ws == [*range(10), 1001]  # every accepted message answered, then 'going away'

    code = await asyncio.to_thread(server.wait, 60)
    assert code == 0, server.describe()
    steps = sorted(r.json()["results"][-1]["step"] for r, _ in answered)
    assert steps[-1] <= 5 * 800 + 10 * 20
    assert "trackin stopped" in server.logs()


async def test_sigterm_with_idle_connections_exits_at_once(servers: Servers) -> None:
    """Idle keep-alive HTTP and WebSocket connections do not hold the shutdown up (uvicorn's own
    shutdown would wait for the WebSocket handler until its graceful timeout, here 60 s, so exiting
    within 30 s under any load tells the two apart)."""
    server = servers.start({"TRACKIN_SHUTDOWN_TIMEOUT_SECONDS": "60"})
    async with httpx.AsyncClient(base_url=server.url) as http, connect(server.ws_url) as ws:
        assert (await http.get("/healthz")).status_code == 200
        started = time.monotonic()
        server.terminate()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=20)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    code = await asyncio.to_thread(server.wait, 50)
    assert code == 0, server.describe()
    assert time.monotonic() - started < 30

    # The helper other suites rely on: a restart keeps the port; SIGKILL is a crash, not a clean exit.
    url = server.url
    await asyncio.to_thread(server.start)
    assert server.url == url
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/readyz")).status_code == 200
    assert await asyncio.to_thread(server.kill) == -9
    assert not server.running
