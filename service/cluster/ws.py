"""``/v1/ws`` in cluster mode: single-node's frames, each message forwarded as a multi-stream request.

``{"seq", "observations"}`` in (JSON text or MessagePack binary), ``{"seq", "results"}`` out, in order, or
the columnar form (``{"seq", "streams", "x", "y"}``, answered with columns, raw buffers in MessagePack); a
bad message gets ``{"seq", "error"}`` and the connection stays open; an oversized frame closes it with
1009, an unparsable one with 1007 (after the answers to the messages before it), as single-node.

Pipelined as single-node's: a reader decodes each message and starts its check by its streams' owners and its
logging per partition (`many.submit_items`), then reads the next one, while a writer waits for the owners'
answers and sends them in order. Checks overlap; each message is logged only once the one before it was, so a
connection's messages are applied in the order sent, whichever partitions they touch; with
``max_ws_in_flight`` messages outstanding, or ``max_ws_in_flight_bytes`` of their frames, the reader stops
reading, and TCP backpressure slows a fast client. A message is checked against its owners' state before the
messages still in flight are applied: one those change (a series time) is refused by its owner at apply time,
answered as a partial failure (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeAlias

import msgspec
import numpy as np
import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from trackin.service.cluster.columns import Encode, submit_columns
from trackin.service.cluster.many import Pending, body_items, submit_items
from trackin.service.cluster.messages import Answer
from trackin.service.cluster.state import ClusterState
from trackin.service.errors import InvalidInput, ServiceError
from trackin.service.security.namespace import Namespace, principal_of
from trackin.service.transport.inflight import InFlightBytes
from trackin.service.transport.results import encode_columns_json, encode_columns_msgpack
from trackin.service.transport.wire import WsMessage, decode_json, decode_msgpack

__all__ = ["router"]

router = APIRouter()

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009

_Entry = tuple[Any, bool, Pending | dict[str, Any], bool, int]
"""(seq, binary, the answer to come or an error body, columnar, frame bytes): one message checked and
logged."""
_Queued: TypeAlias = "asyncio.Task[_Entry] | tuple[int, str] | None"
"""What the writer takes, in the order read: a message being checked and logged, a close, the end."""


class _SeqOnly(msgspec.Struct):
    seq: Any = None


@router.websocket("/v1/ws")
async def ingest(websocket: WebSocket) -> None:
    state: ClusterState = websocket.app.state.cluster
    # A key offered as the subprotocol trackin.bearer.<key> (service/security/guard.py) is echoed back.
    await websocket.accept(subprotocol=websocket.scope.get("trackin.subprotocol"))
    namespace = principal_of(websocket.scope).namespace
    queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=state.settings.max_ws_in_flight)
    held = InFlightBytes(state.settings.max_ws_in_flight_bytes)
    writer = asyncio.create_task(_write(websocket, queue, namespace, held))
    try:
        await _read(websocket, state, queue, namespace, held)
    except WebSocketDisconnect:
        pass
    finally:
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await queue.put(None)
            await writer


async def _read(
    websocket: WebSocket,
    state: ClusterState,
    queue: asyncio.Queue[_Queued],
    namespace: Namespace,
    held: InFlightBytes,
) -> None:
    limit = state.settings.max_ws_message_bytes
    previous: asyncio.Future[None] | None = None
    while True:
        await held.room()
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        binary = message.get("bytes") is not None
        data: bytes | str = message["bytes"] if binary else message.get("text") or ""
        if len(data) > limit:
            await queue.put((CLOSE_TOO_BIG, f"message exceeds {limit} bytes"))
            return
        held.take(len(data))  # given back by the writer once the message is answered
        try:
            decoded: WsMessage | ServiceError = (
                decode_msgpack(data, WsMessage) if isinstance(data, bytes) else decode_json(data, WsMessage)
            )
        except ServiceError as exc:
            if isinstance(exc, InvalidInput) and exc.message.startswith("malformed"):
                await queue.put((CLOSE_INVALID_PAYLOAD, "unparsable frame"))
                return
            decoded = exc
        logged = asyncio.get_running_loop().create_future()
        submitted = _submit(state, data, binary, decoded, namespace, previous, logged)
        await queue.put(asyncio.create_task(submitted))
        previous = logged


async def _submit(
    state: ClusterState,
    data: bytes | str,
    binary: bool,
    decoded: WsMessage | ServiceError,
    namespace: Namespace,
    previous: asyncio.Future[None] | None,
    logged: asyncio.Future[None],
) -> _Entry:
    """Check one message, then log it once the message before it is logged (``previous``), then say so
    (``logged``): checks overlap, the log's order is the connection's."""
    seq = None
    limit = state.settings.max_request_observations
    try:
        if isinstance(decoded, ServiceError):
            raise decoded
        seq = decoded.seq
        if decoded.streams is not None:
            encode = _column_encoder(seq, binary)
            pending = await submit_columns(state.front, decoded, namespace, limit, encode, after=previous)
            return seq, binary, pending, True, len(data)
        items = body_items(decoded)
        submitted = await submit_items(state.front, items, namespace, limit, after=previous)
        return seq, binary, submitted, False, len(data)
    except ServiceError as exc:
        if seq is None:
            seq = _seq_of(data)
        return seq, binary, namespace.public_error(exc).body(), False, len(data)
    finally:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # a refused message must not let the next one overtake it
        logged.set_result(None)


def _column_encoder(seq: Any, binary: bool) -> Encode:
    def encode(columns: dict[str, np.ndarray]) -> bytes:
        return encode_columns_msgpack(columns, seq) if binary else encode_columns_json(columns, seq)

    return encode


async def _write(
    websocket: WebSocket, queue: asyncio.Queue[_Queued], namespace: Namespace, held: InFlightBytes
) -> None:
    gone = False  # the client left: keep taking entries (unanswered) so the reader never blocks on us
    while True:
        queued = await queue.get()
        if queued is None:
            return
        if isinstance(queued, tuple):
            code, reason = queued
            if not gone:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    await websocket.close(code, reason)
            gone = True
            continue
        seq, binary, outcome, columnar, size = await queued
        if isinstance(outcome, dict):
            frame: bytes = _encode({"seq": seq, **outcome}, binary)
        else:
            answer = outcome if isinstance(outcome, Answer) else await outcome
            frame = _frame(seq, binary, answer, columnar, namespace)
        if not gone:
            try:
                if binary:
                    await websocket.send_bytes(frame)
                else:
                    await websocket.send_text(frame.decode())
            except (WebSocketDisconnect, RuntimeError):
                gone = True
        held.give(size)


def _frame(seq: Any, binary: bool, answer: Answer, columnar: bool, namespace: Namespace) -> bytes:
    """The answer frame of one message, with the caller's ids."""
    if columnar and answer.status == 200:
        return answer.body  # rendered with its seq by `_column_encoder`
    raw = answer.body
    if namespace.prefix:  # as routes._response: the prefix occurs only as the namespace
        raw = raw.replace(namespace.prefix.encode(), b"")
    out: dict[str, Any] = orjson.loads(raw)
    return _encode({"seq": seq, **out}, binary)


def _encode(body: dict[str, Any], binary: bool) -> bytes:
    return msgspec.msgpack.encode(body) if binary else msgspec.json.encode(body)


def _seq_of(data: bytes | str) -> Any:
    try:
        if isinstance(data, bytes):
            return msgspec.msgpack.decode(data, type=_SeqOnly).seq
        return msgspec.json.decode(data, type=_SeqOnly).seq
    except msgspec.DecodeError:
        return None
