"""Reading request bodies with a size limit, before any parsing."""

from __future__ import annotations

import contextlib
import re

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackin.service.errors import InvalidStreamId, PayloadTooLarge
from trackin.service.ids import check_stream_id

__all__ = ["BodyLimit", "read_body"]

# The routes about one stream (/v1/streams/{id}/...): a refused body still names its stream.
_STREAM_PATH = re.compile(r"^/v1/streams/([^/]+)")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes whether or not Content-Length is declared."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


class BodyLimit:
    """Refuses HTTP bodies over ``limit`` bytes with 413 before any route parses them (pydantic bodies
    such as specs included). A declared length is checked up front (the server never reads past it); a
    chunked body is read up to the limit and then replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                refusal = f"body of {int(declared)} bytes exceeds the limit of {self.limit}"
                await self._refuse(refusal, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(f"body exceeds the limit of {self.limit} bytes", scope, receive, send)
                return
            chunks.append(message)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, receive), send)

    async def _refuse(self, text: str, scope: Scope, receive: Receive, send: Send) -> None:
        named = _STREAM_PATH.match(scope["path"])
        stream = None
        if named:
            with contextlib.suppress(InvalidStreamId):
                stream = check_stream_id(named[1])
        error = PayloadTooLarge(text, field="body", stream=stream)
        await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
