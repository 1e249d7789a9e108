"""Request ids, and the last line of defence: any exception a handler lets out becomes a logged 500.

Every HTTP answer carries ``X-Request-ID``: the client's own when it sent a usable one, else a new one.
An exception that escapes every handler is answered with the error schema (code ``internal_error``) naming
that id, and logged with it and the traceback, so a client's report finds the log line. Pure ASGI, like
the other middleware (no task or stream per request).
"""

from __future__ import annotations

import logging
import re
import uuid

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackin.service.errors import InternalError

__all__ = ["REQUEST_ID_HEADER", "RequestIds", "request_id"]

log = logging.getLogger("trackin")

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER = REQUEST_ID_HEADER.lower().encode()
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
"""A client's id is echoed only if it is short and safe to put in a log line and a header."""


def request_id(scope: Scope) -> str | None:
    """The id given to this request by `RequestIds` (None outside it)."""
    found: str | None = scope.get("state", {}).get("request_id")
    return found


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == _HEADER), None)
        rid = sent.decode() if sent is not None and _USABLE.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        header = (_HEADER, rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("internal error, request id %s: %s %s", rid, scope["method"], scope["path"])
            if started:  # too late for an answer: the connection is closed by the server
                return
            error = InternalError(f"internal error; report request id {rid}")
            body = error.body()
            body["error"]["request_id"] = rid
            content = msgspec.json.encode(body)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                header,
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": content})
