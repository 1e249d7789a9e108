"""Authentication and scopes for every HTTP request and WebSocket handshake, as pure ASGI middleware.

Keys come as ``Authorization: Bearer <key>``; a browser's WebSocket, which cannot set headers, may offer the
subprotocol ``trackin.bearer.<key>`` instead (echoed back on accept). A WebSocket with an ``Origin`` not in
``allowed_origins`` is refused whether or not keys are enforced: any web page could otherwise write to a
service on localhost (clients outside browsers send no Origin and are allowed).

Scopes: ``read`` for GET and ``predict``; ``ingest`` for observations, labels and the WebSocket; ``admin``
for PUT and DELETE (streams, templates) and, on the ``default`` tenant only, ``/metrics`` (it shows every
tenant's figures). Health, readiness and the API docs are public. Refusals: 401 with
``WWW-Authenticate: Bearer`` (no key, unknown or revoked), 403 (scope or Origin), 429 with ``Retry-After``
(the key's rate), 503 while the keys could not be read yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from trackin.service.errors import (
    Forbidden,
    ServiceError,
    Unauthorized,
    Unavailable,
    error_headers,
)
from trackin.service.security.keyring import Keyring
from trackin.service.security.limiter import Limiter
from trackin.service.security.namespace import OPEN, PRINCIPAL, Principal

__all__ = ["SUBPROTOCOL", "Gate", "Guard", "public_path", "required_scope"]

SUBPROTOCOL = "trackin.bearer."
_PUBLIC = frozenset({"/healthz", "/readyz", "/openapi.json", "/redoc"})
_AUTHORIZATION = b"authorization"


def required_scope(method: str, path: str) -> str:
    """The scope an HTTP request needs (the WebSocket needs ``ingest``)."""
    if path == "/metrics":
        return "admin"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "POST":
        return "read" if path.endswith("/predict") else "ingest"
    return "admin"


class Gate:
    """Who a request is: its key's principal (``OPEN`` when keys are not enforced), or the refusal.

    The one check of keys, scopes and per-key rates, shared by `Guard` and the observation fast lane
    (service/transport/fastpath.py), which answers before the middleware stack."""

    def __init__(
        self, get_keyring: Callable[[], Keyring | None], get_limiter: Callable[[], Limiter | None]
    ) -> None:
        self.get_keyring = get_keyring
        self.get_limiter = get_limiter

    async def authenticate(self, scope: Scope) -> Principal:
        keyring = self.get_keyring()
        if keyring is None or not keyring.enforcing:
            return OPEN
        if not keyring.loaded:
            raise Unavailable("API keys not read yet: the store is unavailable")
        token = _token(scope)
        if token is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        principal = keyring.lookup(token)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        websocket = scope["type"] == "websocket"
        path = scope["path"]
        need = "ingest" if websocket else required_scope(scope["method"], path)
        if need not in principal.scopes or (path == "/metrics" and principal.tenant != OPEN.tenant):
            whose = " of the default tenant" if path == "/metrics" else ""
            raise Forbidden(f"this key lacks the {need!r} scope{whose}")
        limiter = self.get_limiter()
        if limiter is not None and principal.key_id is not None:
            await limiter.admit_key(principal.key_id)
        return principal


class Guard:
    """Sets ``scope[PRINCIPAL]`` for what it lets through; answers refusals itself."""

    def __init__(
        self,
        app: ASGIApp,
        get_keyring: Callable[[], Keyring | None],
        get_limiter: Callable[[], Limiter | None],
        allowed_origins: list[str],
    ) -> None:
        self.app = app
        self.gate = Gate(get_keyring, get_limiter)
        self.origins = frozenset(o.rstrip("/").encode() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or (kind == "http" and public_path(scope["path"])):
            await self.app(scope, receive, send)
            return
        try:
            if kind == "websocket":
                self._check_origin(scope)
                _note_subprotocol(scope)
            principal = await self.gate.authenticate(scope)
        except ServiceError as exc:
            await _refuse(scope, send, exc)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    def _check_origin(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"origin" and value.rstrip(b"/") not in self.origins:
                raise Forbidden(f"Origin {value.decode(errors='replace')[:100]!r} is not allowed")


def public_path(path: str) -> bool:
    """Health, readiness and the API docs: answered to anyone."""
    return path in _PUBLIC or path.startswith("/docs")


def _token(scope: Scope) -> str | None:
    """The bearer token of the Authorization header, else of a ``trackin.bearer.<key>`` subprotocol."""
    for name, value in scope["headers"]:
        if name == _AUTHORIZATION:
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    offered = scope.get("trackin.subprotocol")
    return offered.removeprefix(SUBPROTOCOL) or None if offered else None


def _note_subprotocol(scope: Scope) -> None:
    """A key offered as a subprotocol is echoed on accept (a browser drops a connection that does not
    echo what it offered), keys enforced or not."""
    for offered in scope.get("subprotocols", ()):
        if offered.startswith(SUBPROTOCOL):
            scope["trackin.subprotocol"] = offered
            return


async def _refuse(scope: Scope, send: Send, exc: ServiceError) -> None:
    body = msgspec.json.encode(exc.body())
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # A WebSocket refused at the handshake: an HTTP answer where the server supports it, else a 403.
    if "websocket.http.response" in scope.get("extensions", {}):
        start: dict[str, Any] = {"type": "websocket.http.response.start", "status": exc.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
