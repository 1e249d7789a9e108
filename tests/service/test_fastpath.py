"""The observation endpoints answered ahead of FastAPI's stack (service/transport/fastpath.py) keep what the
stack gave them: a request id on every answer, errors included; the declared body size refused before the
body is read, naming the stream; and answers written whole over a keep-alive connection
(`CoalescingHttpProtocol`: head and body in one write), pipelined requests answered in order."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import orjson

from tests.support.server import TrackinServer

_SPEC = {"model": {"family": "linear", "in_dim": 3}}


def _stream(http: httpx.Client, name: str) -> str:
    assert http.put(f"/v1/streams/{name}", json=_SPEC).status_code in (200, 201)
    return name


def test_observation_answers_carry_request_ids(http: httpx.Client) -> None:
    sid = _stream(http, "fast-ids")
    path = f"/v1/streams/{sid}/observations"
    mine = http.post(path, json={"x": [1, 2, 3], "y": 1.0}, headers={"x-request-id": "trace-7"})
    assert mine.status_code == 200
    assert mine.headers["x-request-id"] == "trace-7"
    made = [http.post(path, json={"x": [1, 2, 3], "y": 1.0}).headers["x-request-id"] for _ in range(2)]
    assert made[0] != made[1]
    assert all(len(m) == 32 for m in made)
    bad = http.post(path, json={"x": [1, 2], "y": 1.0}, headers={"x-request-id": "trace-8"})
    assert bad.status_code == 422
    assert bad.headers["x-request-id"] == "trace-8"
    assert bad.json()["error"]["field"] == "observations[0].x"
    many = http.post("/v1/observations", json={"streams": [sid], "x": [[1, 2, 3]], "y": [1.0]})
    assert many.status_code == 200
    assert len(many.headers["x-request-id"]) == 32


def test_a_declared_oversized_body_is_refused_unread(limits_server: TrackinServer) -> None:
    """The limits server takes 4,096 bytes: a request declaring more is answered 413 without its body
    being sent at all (the server must not wait for it)."""
    with httpx.Client(base_url=limits_server.url, timeout=30) as http:
        sid = _stream(http, "fast-big")
    host, port = _address(limits_server.url)
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(
            f"POST /v1/streams/{sid}/observations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        head, body = _Answers(conn).next()
    assert head.startswith(b"HTTP/1.1 413")
    error = orjson.loads(body)["error"]
    assert (error["field"], error["stream"]) == ("body", sid)


def test_pipelined_requests_are_answered_whole_and_in_order(
    http: httpx.Client, server: TrackinServer
) -> None:
    sid = _stream(http, "fast-pipe")
    host, port = _address(server.url)
    requests = b""
    for i in range(5):
        body = orjson.dumps({"x": [i, 1, 2], "y": float(i)})
        requests += (
            f"POST /v1/streams/{sid}/observations HTTP/1.1\r\nHost: x\r\nX-Request-ID: pipe-{i}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    requests += b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"  # a big answer after them
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(requests)
        reader = _Answers(conn)
        answers = [reader.next() for _ in range(6)]
    steps = [orjson.loads(body)["results"][0]["step"] for _, body in answers[:5]]
    assert steps == [1, 2, 3, 4, 5]
    assert [_header(head, b"x-request-id") for head, _ in answers[:5]] == [b"pipe-%d" % i for i in range(5)]
    assert orjson.loads(answers[5][1])["openapi"].startswith("3.")


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class _Answers:
    """HTTP answers with a Content-Length, read one by one from a connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.data = b""

    def next(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        length = int(_header(head, b"content-length") or b"0")
        while len(self.data) < length:
            self._more()
        body, self.data = self.data[:length], self.data[length:]
        return head, body

    def _more(self) -> None:
        chunk = self.conn.recv(65536)
        assert chunk, "the server closed the connection"
        self.data += chunk


def test_stream_reads_keep_the_stacks_answers(http: httpx.Client) -> None:
    """``GET /v1/streams/{id}`` is answered ahead of the stack too: the same description, a request id on
    every answer, errors in the one shape naming the stream, and counted by route template and method."""
    sid = _stream(http, "fast-read")
    assert http.post(f"/v1/streams/{sid}/observations", json={"x": [1, 2, 3], "y": 1.0}).status_code == 200
    read = http.get(f"/v1/streams/{sid}", headers={"x-request-id": "trace-9"})
    assert read.status_code == 200
    assert read.headers["x-request-id"] == "trace-9"
    assert read.headers["content-type"] == "application/json"
    body = read.json()
    assert (body["stream"], body["figures"]["steps"]) == (sid, 1)
    missing = http.get("/v1/streams/fast-nobody")
    assert missing.status_code == 404
    assert len(missing.headers["x-request-id"]) == 32
    assert missing.json()["error"]["stream"] == "fast-nobody"
    bad = http.get("/v1/streams/" + "x" * 300)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "stream_id"
    metrics = http.get("/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("trackin_http_requests_total")
        and 'route="/v1/streams/{stream_id}"' in line
        and 'method="GET"' in line
    ]
    assert any('status="200"' in line for line in counted), counted
    assert any('status="404"' in line for line in counted), counted
