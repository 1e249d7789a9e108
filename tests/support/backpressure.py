"""A WebSocket client that sends without reading, against any server (a single node or a cluster replica):
the server must stop reading once its answers back up, lose nothing, and answer everything in order.

Shared by the single node's test (bounded by messages or by bytes) and the cluster's (bounded by bytes), so
both read frames through their own transport with the same check.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.support.server import TrackinServer

__all__ = ["check_backpressure"]

# Bytes user space may hold on the way, beyond the kernel's socket buffers: the client's reads are paused
# with at most one socket read (asyncio reads 256 KiB at a time) and ``max_queue`` frames queued; the
# server's transport holds at most its write buffer's high-water mark (64 KiB) and the frame being written.
USER_SPACE_BYTES = 2 * 256 * 1024


def _max_send_buffer() -> int:
    """The most a TCP socket's send buffer grows to by itself (Linux autotuning's cap, net.ipv4.tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 64 * 1024 * 1024  # no /proc: far more than any default


async def _steps(http: httpx.AsyncClient, stream_id: str) -> int:
    response = await http.get(f"/v1/streams/{stream_id}")
    assert response.status_code == 200, response.text
    value: int = response.json()["figures"]["steps"]
    return value


async def check_backpressure(
    server: TrackinServer, in_flight: int, headers: dict[str, str] | None = None
) -> None:
    """A client that sends without reading: the server (``in_flight`` messages read and unanswered at most,
    by their count or by their bytes) stops reading once the answers back up, so it never reads more than
    that bound plus the answers the connection can buffer; when the client reads, every answer arrives
    exactly once, in order, and every message was applied.

    The buffers are measured, not assumed: the client's receive buffer (set small, read back), the cap of
    the server's send buffer (tcp_wmem), and user space's share bound how many answers can be on their way;
    the client sends that many plus 200 more messages, so the server must stop reading before the end
    whatever the kernel's buffer sizes, and the bound is checked against the step count."""
    headers = headers or {}
    sid = f"bp-{uuid.uuid4().hex[:12]}"
    out_dim = 300  # answers much larger than messages: a few hundred fill the buffers
    spec = {
        "model": {"family": "linear", "in_dim": 1, "out_dim": out_dim, "init": "random"},
        "optimizer": {"name": "sgd", "lr": 1e-3},
        "standardize": False,  # raw units: standardised, a constant target is predicted as "1.0", short
    }
    message = {"observations": [{"stream": sid, "x": [1.0], "y": [1] * out_dim}]}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
        created = await http.put(f"/v1/streams/{sid}", json=spec)
        assert created.status_code == 201, created.text
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # what the kernel granted
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        sent = 0
        async with connect(
            server.ws_url,
            sock=sock,
            max_queue=1,
            compression=None,
            additional_headers=headers,
            open_timeout=10,
            close_timeout=5,
        ) as ws:
            await ws.send(json.dumps({"seq": 0, **message}))
            # Answers are 300 floats of full precision (random weights), so about as long as the first;
            # count them at half its length to be safe.
            answer_bytes = len(await ws.recv())
            buffered = (receive_buffer + _max_send_buffer() + USER_SPACE_BYTES) // (answer_bytes // 2)
            # read but unanswered: the queue, the answer being written, the message waiting to be queued
            bound = 1 + buffered + in_flight + 2
            total = bound + 200

            async def send_all() -> None:
                nonlocal sent
                for seq in range(1, total):
                    await ws.send(json.dumps({"seq": seq, **message}))
                    sent += 1

            sender = asyncio.create_task(send_all())
            try:
                # Until the step count rests for a second (a slow server only makes this wait longer).
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 90
                history = [await _steps(http, sid)]
                while len(history) < 5 or len(set(history[-5:])) > 1:
                    assert loop.time() < deadline, history[-10:]
                    assert history[-1] <= bound, f"the server read {history[-1]} messages, bound {bound}"
                    await asyncio.sleep(0.25)
                    history.append(await _steps(http, sid))
                stalled = history[-1]
                assert stalled <= bound, f"the server read {stalled} messages unanswered, bound {bound}"
                assert stalled < total
                seqs, sizes = [], []
                for _ in range(1, total):
                    frame = await asyncio.wait_for(ws.recv(), timeout=30)
                    sizes.append(len(frame))
                    got = json.loads(frame)
                    seqs.append(got["seq"])
                    assert got["results"][0]["step"] == got["seq"] + 1, got["seq"]
                await sender
            finally:
                sender.cancel()
        assert sent == total - 1
        assert seqs == list(range(1, total))
        assert min(sizes) > answer_bytes // 2, (min(sizes), answer_bytes)
        assert await _steps(http, sid) == total
