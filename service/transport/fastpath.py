"""The observation endpoints answered as plain ASGI, ahead of FastAPI's routing.

``POST /v1/streams/{id}/observations`` and ``POST /v1/observations`` are the hot path. Through FastAPI each
request also pays route matching over every route, dependency solving, a ``Request`` and a ``Response``
object and an exception-handler scope: about as much CPU as parsing, validating and stepping one observation.
This middleware recognises the two paths, reads the body itself and calls the same functions as the routes
(``routes/observations.py``, which stay registered: they document the endpoints in OpenAPI). Anything else,
and any request before the lifespan has built the state, goes on to the app unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from trackin.service.errors import InvalidStreamId, PayloadTooLarge, ServiceError, error_headers
from trackin.service.ids import check_stream_id
from trackin.service.security.namespace import principal_of
from trackin.service.state import AppState
from trackin.service.transport.media import body_format
from trackin.service.transport.routes.observations import observe_many_streams, observe_one

__all__ = ["FastObservations"]

_PREFIX = "/v1/streams/"
_SUFFIX = "/observations"


class _Route:
    """What ``scope["route"]`` carries for the metrics middleware: the route template."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_ONE = _Route(f"{_PREFIX}{{stream_id}}{_SUFFIX}")
_MANY = _Route("/v1/observations")
_JSON = (b"content-type", b"application/json")


class FastObservations:
    def __init__(self, app: ASGIApp, get_state: Callable[[], AppState | None]) -> None:
        self.app = app
        self.get_state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        stream: str | None = None
        if path == "/v1/observations":
            route = _MANY
        elif path.startswith(_PREFIX) and path.endswith(_SUFFIX) and "/" not in path[12:-13] and path[12:-13]:
            route, stream = _ONE, path[12:-13]
        else:
            await self.app(scope, receive, send)
            return
        state = self.get_state()
        if state is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        started = time.perf_counter()
        try:
            try:
                fmt = body_format(_header(scope, b"content-type"))
                raw = await _body(receive, state.settings.max_body_bytes)
            except ServiceError as exc:
                state.metrics.observed("rejected", "rest")
                if stream is not None:  # named as BodyLimit names it: only a valid id
                    with contextlib.suppress(InvalidStreamId):
                        exc.stream = check_stream_id(stream)
                raise
            if raw is None:
                return  # the client left
            caller = principal_of(scope)
            if stream is None:
                body = await observe_many_streams(state, caller, raw, fmt, started)
            else:
                body = await observe_one(state, caller, stream, raw, fmt, started)
        except ServiceError as exc:
            await _answer(send, exc.status, msgspec.json.encode(exc.body()), _retry(exc))
            return
        await _answer(send, 200, body)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def _retry(exc: ServiceError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]


async def _body(receive: Receive, limit: int) -> bytes | None:
    """The whole body (None if the client disconnected), refusing more than ``limit`` bytes."""
    message: Any = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
