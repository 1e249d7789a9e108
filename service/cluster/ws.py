"""``/v1/ws`` in cluster mode: single-node's frames, each message forwarded as a multi-stream request.

``{"seq", "observations"}`` in (JSON text or MessagePack binary), ``{"seq", "results"}`` out, in order; a bad
message gets ``{"seq", "error"}`` and the connection stays open; an oversized frame closes it with 1009, an
unparsable one with 1007, as single-node. Each message is checked by its streams' owners, logged per
partition and answered (`many.observe_items`) before the next message is read: a connection's messages are
applied in the order sent, whichever partitions they touch, and TCP backpressure slows a fast client.
The columnar form is refused (not served in cluster mode yet).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from trackin.service.cluster.many import body_items, observe_items
from trackin.service.cluster.state import ClusterState
from trackin.service.errors import InvalidInput, ServiceError
from trackin.service.security.namespace import Namespace, principal_of
from trackin.service.transport.wire import WsMessage, decode_json, decode_msgpack

__all__ = ["router"]

router = APIRouter()

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009


class _SeqOnly(msgspec.Struct):
    seq: Any = None


@router.websocket("/v1/ws")
async def ingest(websocket: WebSocket) -> None:
    state: ClusterState = websocket.app.state.cluster
    # A key offered as the subprotocol trackin.bearer.<key> (service/security/guard.py) is echoed back.
    await websocket.accept(subprotocol=websocket.scope.get("trackin.subprotocol"))
    namespace = principal_of(websocket.scope).namespace
    limit = state.settings.max_ws_message_bytes
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            binary = message.get("bytes") is not None
            data: bytes | str = message["bytes"] if binary else message.get("text") or ""
            if len(data) > limit:
                await websocket.close(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")
                return
            body = await _answer(state, data, namespace)
            if body is None:
                await websocket.close(CLOSE_INVALID_PAYLOAD, "unparsable frame")
                return
            if binary:
                await websocket.send_bytes(msgspec.msgpack.encode(body))
            else:
                await websocket.send_text(msgspec.json.encode(body).decode())
    except WebSocketDisconnect:
        return


async def _answer(state: ClusterState, data: bytes | str, namespace: Namespace) -> dict[str, Any] | None:
    """The answer frame of one message (with the caller's ids), None for an unparsable frame."""
    seq = None
    try:
        decoded: WsMessage = (
            decode_msgpack(data, WsMessage) if isinstance(data, bytes) else decode_json(data, WsMessage)
        )
        seq = decoded.seq
        items = body_items(decoded)
        limit = state.settings.max_request_observations
        answer = await observe_items(state.front, items, namespace, limit)
    except ServiceError as exc:
        if isinstance(exc, InvalidInput) and exc.message.startswith("malformed"):
            return None
        if seq is None:
            seq = _seq_of(data)
        return {"seq": seq, **namespace.public_error(exc).body()}
    raw = answer.body
    if namespace.prefix:  # as routes._response: the prefix occurs only as the namespace
        raw = raw.replace(namespace.prefix.encode(), b"")
    out: dict[str, Any] = orjson.loads(raw)
    return {"seq": seq, **out}


def _seq_of(data: bytes | str) -> Any:
    try:
        if isinstance(data, bytes):
            return msgspec.msgpack.decode(data, type=_SeqOnly).seq
        return msgspec.json.decode(data, type=_SeqOnly).seq
    except msgspec.DecodeError:
        return None
