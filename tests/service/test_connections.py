"""Sockets that never complete a request are closed; the server keeps answering meanwhile.

A real server with 1 s header and body deadlines; silent sockets (connect, send nothing), slowloris sockets
(a header byte every 0.2 s) and slow bodies (full headers, then a body byte every 0.2 s) must be closed by
the server, while /healthz keeps answering and a WebSocket outlives both deadlines.
"""

from __future__ import annotations

import contextlib
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.server import Servers

pytestmark = pytest.mark.timeout(60)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_silent_and_slowloris_sockets_are_closed(servers: Servers) -> None:
    server = servers.start({"TRACKIN_HEADER_TIMEOUT_SECONDS": "1"})
    silent = [_connect(server.url) for _ in range(40)]
    slow = [_connect(server.url) for _ in range(10)]
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    sent = 0
    with httpx.Client(base_url=server.url, timeout=5) as http:
        while time.monotonic() - started < 3:
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server: what we wait for
                    sock.send(header[sent : sent + 1])
            sent += 1
            assert http.get("/healthz").status_code == 200  # the server answers meanwhile
            time.sleep(0.2)
    assert all(_closed_by_peer(s) for s in silent)
    assert all(_closed_by_peer(s) for s in slow)
    assert "no complete request headers" in server.logs()
    for sock in silent + slow:
        sock.close()


def test_a_request_within_the_deadline_is_served(servers: Servers) -> None:
    server = servers.start({"TRACKIN_HEADER_TIMEOUT_SECONDS": "1"})
    sock = _connect(server.url)
    sock.setblocking(True)
    for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        sock.sendall(part)
        time.sleep(0.2)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # Idle after a response: the keep-alive timeout, not the header deadline, closes it later.
    time.sleep(1.5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()


def test_a_trickled_body_is_closed_and_a_websocket_is_not(servers: Servers) -> None:
    server = servers.start({"TRACKIN_HEADER_TIMEOUT_SECONDS": "1", "TRACKIN_BODY_TIMEOUT_SECONDS": "1"})
    slow = [_connect(server.url) for _ in range(5)]
    head = (
        b"POST /v1/observations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    for sock in slow:
        sock.send(head)
    with connect(server.url.replace("http://", "ws://") + "/v1/ws", open_timeout=5) as ws:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as http:
            while time.monotonic() - started < 3:
                for sock in slow:
                    with contextlib.suppress(OSError):  # closed by the server: what we wait for
                        sock.send(b" ")
                assert http.get("/healthz").status_code == 200
                time.sleep(0.2)
        assert all(_closed_by_peer(s) for s in slow)
        assert "no complete request body" in server.logs()
        ws.send('{"seq": 1, "observations": []}')  # still open after 3 s: the deadlines left with the upgrade
        assert ws.recv(timeout=5)
    for sock in slow:
        sock.close()
