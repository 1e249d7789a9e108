"""Request ids, and the last line of defence: any exception a handler lets out becomes a logged 500.

Every HTTP answer carries ``X-Request-ID``: the client's own when it sent a usable one, else a new one.
An exception that escapes every handler is answered with the error schema (code ``internal_error``) naming
that id, and logged with it and the traceback, so a client's report finds the log line. Pure ASGI, like
the other middleware (no task or stream per request).
"""

from __future__ import annotations

import itertools
import logging
import os
import re

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackin.service.errors import InternalError

__all__ = ["REQUEST_ID_HEADER", "RequestIds", "incoming_or_new", "new_request_id", "request_id"]

log = logging.getLogger("trackin")

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER = REQUEST_ID_HEADER.lower().encode()
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
"""A client's id is echoed only if it is short and safe to put in a log line and a header."""

_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def _new_process() -> None:
    """A forked child draws its own prefix (else parent and child would hand out the same ids)."""
    global _PREFIX
    _PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_process)


def new_request_id() -> str:
    """32 hex digits, unique in this process and, by a random per-process half, across processes
    (``uuid4().hex`` cost 3-4 us a request, most of a single observation's id handling)."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


def incoming_or_new(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when usable, else a new id."""
    for key, value in scope["headers"]:
        if key == _HEADER:
            return value.decode() if _USABLE.fullmatch(value) else new_request_id()
    return new_request_id()


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
        rid = incoming_or_new(scope)
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
