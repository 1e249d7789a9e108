"""The observation endpoints and the stream reads answered as plain ASGI, ahead of FastAPI and its middleware
stack.

``POST /v1/streams/{id}/observations`` and ``POST /v1/observations`` are the hot path, and ``POST
/v1/streams/{id}/predict`` and ``GET /v1/streams/{id}`` its reads. Through the app each
request also paid FastAPI's and Starlette's own layers (error middleware, telemetry, body limit, exception
handlers, route matching over every route, dependency solving, a ``Request`` and a ``Response``) and five
middlewares of ours, each wrapping ``send`` once more: together more CPU than parsing, validating and
stepping one observation. The app (`TrackinApp`) hands these two paths to `FastObservations` before all of
that. It does what the stack did for them, in one pass and with the same functions: the request id
(``X-Request-ID`` on every answer), the key check (`Gate`: keys, scopes, per-key rates), the declared body
size, the request metrics by route template, the one error shape, a logged 500 naming the request id for
anything unexpected; and then calls the same functions as the routes (``routes/observations.py``, which
stay registered: they document the endpoints in OpenAPI and serve them when the state is not built yet).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from trackin.service.errors import (
    InternalError,
    InvalidStreamId,
    PayloadTooLarge,
    ServiceError,
    error_headers,
)
from trackin.service.ids import check_stream_id
from trackin.service.security.guard import Gate
from trackin.service.security.namespace import PRINCIPAL
from trackin.service.state import AppState
from trackin.service.transport.media import body_format
from trackin.service.transport.requestid import incoming_or_new
from trackin.service.transport.routes.observations import observe_many_streams, observe_one
from trackin.service.transport.routes.streams import describe_answer, predict_answer

__all__ = ["FastObservations"]

log = logging.getLogger("trackin")

_PREFIX = "/v1/streams/"
_SUFFIX = "/observations"
_PREDICT_SUFFIX = "/predict"
_ONE = f"{_PREFIX}{{stream_id}}{_SUFFIX}"  # the route templates, as the request metrics name them
_MANY = "/v1/observations"
_PREDICT = f"{_PREFIX}{{stream_id}}{_PREDICT_SUFFIX}"
_STREAM = f"{_PREFIX}{{stream_id}}"
_JSON = (b"content-type", b"application/json")
_REQUEST_ID = b"x-request-id"


class FastObservations:
    """`match` a scope, then `serve` it: the observation endpoints and stream reads without the app's
    stack."""

    def __init__(self, get_state: Callable[[], AppState | None], gate: Gate) -> None:
        self.get_state = get_state
        self.gate = gate

    def match(self, scope: Scope) -> tuple[AppState, str | None, str] | None:
        """The state, the URL's stream (None: ``/v1/observations``) and the route template for a hot
        request, else None (anything else, and any request before the lifespan has built the state)."""
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        stream: str | None = None
        route = _MANY
        if scope["method"] == "GET":
            stream, route = path[len(_PREFIX) :] if path.startswith(_PREFIX) else "", _STREAM
            if not stream or "/" in stream:
                return None
        elif scope["method"] != "POST":
            return None
        elif path != _MANY:
            if not path.startswith(_PREFIX):
                return None
            if path.endswith(_SUFFIX):
                stream, route = path[len(_PREFIX) : -len(_SUFFIX)], _ONE
            elif path.endswith(_PREDICT_SUFFIX):
                stream, route = path[len(_PREFIX) : -len(_PREDICT_SUFFIX)], _PREDICT
            else:
                return None
            if not stream or "/" in stream:
                return None
        state = self.get_state()
        return None if state is None else (state, stream, route)

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, state: AppState, stream: str | None, route: str
    ) -> None:
        started = time.perf_counter()
        rid = incoming_or_new(scope)
        tag = (_REQUEST_ID, rid.encode())
        status, answered = 500, False
        try:
            try:
                body: bytes | None
                if route == _STREAM:
                    assert stream is not None
                    body = await self._describe(scope, state, stream)
                elif route == _PREDICT:
                    assert stream is not None
                    body = await self._predict(scope, receive, state, stream)
                else:
                    body = await self._observe(scope, receive, state, stream, started)
                if body is None:
                    return  # the client left
                status, headers = 200, [_JSON, (b"content-length", b"%d" % len(body)), tag]
            except ServiceError as exc:
                status = exc.status
                body, headers = _error(exc, rid, tag)
            answered = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception:
            log.exception("internal error, request id %s: %s %s", rid, scope["method"], scope["path"])
            if answered:  # too late for an answer: the connection is closed by the server
                return
            body, headers = _error(InternalError(f"internal error; report request id {rid}"), rid, tag)
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            state.metrics.http_request(route, scope["method"], status, time.perf_counter() - started)

    async def _observe(
        self, scope: Scope, receive: Receive, state: AppState, stream: str | None, started: float
    ) -> bytes | None:
        """The answer's body (None if the client left), or a ``ServiceError``."""
        caller = await self.gate.authenticate(scope)
        scope[PRINCIPAL] = caller
        try:
            limit = state.settings.max_body_bytes
            content_type, declared = _headers(scope)
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"body of {int(declared)} bytes exceeds the limit of {limit}", field="body"
                )
            fmt = body_format(content_type)
            raw = await _body(receive, limit)
        except ServiceError as exc:
            state.metrics.observed("rejected", "rest")
            if stream is not None:  # named only when the id is valid
                with contextlib.suppress(InvalidStreamId):
                    exc.stream = check_stream_id(stream)
            raise
        if raw is None:
            return None
        if stream is None:
            return await observe_many_streams(state, caller, raw, fmt, started)
        return await observe_one(state, caller, stream, raw, fmt, started)

    async def _describe(self, scope: Scope, state: AppState, stream: str) -> bytes:
        """The stream's description, or a ``ServiceError`` with the client's ids."""
        caller = await self.gate.authenticate(scope)
        scope[PRINCIPAL] = caller
        try:
            return await describe_answer(state, caller, stream)
        except ServiceError as exc:
            raise caller.namespace.public_error(exc) from None

    async def _predict(self, scope: Scope, receive: Receive, state: AppState, stream: str) -> bytes | None:
        """The answer's body (None if the client left), or a ``ServiceError`` with the client's ids (as the
        app's error handler gives them)."""
        caller = await self.gate.authenticate(scope)
        scope[PRINCIPAL] = caller
        try:
            limit = state.settings.max_body_bytes
            _, declared = _headers(scope)
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"body of {int(declared)} bytes exceeds the limit of {limit}", field="body"
                )
            raw = await _body(receive, limit)
        except ServiceError as exc:
            with contextlib.suppress(InvalidStreamId):  # named only when the id is valid
                exc.stream = exc.stream or check_stream_id(stream)
            raise
        if raw is None:
            return None
        try:
            return await predict_answer(state, caller, stream, raw, _headers(scope)[0])
        except ServiceError as exc:
            raise caller.namespace.public_error(exc) from None


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """Content-Type and Content-Length, in one pass over the headers."""
    content_type = length = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = bytes(value)
        elif key == b"content-length":
            length = bytes(value)
    return content_type, length


def _error(exc: ServiceError, rid: str, tag: tuple[bytes, bytes]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The one error shape, and its headers (``Retry-After``, ``WWW-Authenticate``, the request id)."""
    content = exc.body()
    if exc.status == 500:  # a corrupt checkpoint, or an unexpected error: the id its log line names
        content["error"]["request_id"] = rid
    body = msgspec.json.encode(content)
    extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
    return body, [_JSON, (b"content-length", b"%d" % len(body)), *extra, tag]


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
