"""WebSocket ingestion: ``{"seq", "observations"}`` in, ``{"seq", "results"}`` out, in order, per message;
or the columnar form ``{"seq", "streams", "x", "y"}`` (MessagePack columns may be raw little-endian float
buffers), answered with columns (raw buffers in MessagePack).

A reader validates and queues each message's observations with the scheduler at once (fixing their order),
then hands the pending answer to a writer through a bounded queue: with ``max_ws_in_flight`` answers
outstanding the reader stops reading, so a fast client is slowed by TCP backpressure; nothing is dropped or
reordered. Bad messages get ``{"seq", "error"}`` and the connection stays open; protocol abuse (oversized or
unparsable frames) closes it: 1009 (message too big) or 1007 (invalid payload data).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, NoReturn

import msgspec
from fastapi import APIRouter, WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from trackin.service.domain.ingest import IngestBatch
from trackin.service.errors import InvalidInput, PayloadTooLarge, ServiceError
from trackin.service.security.namespace import principal_of
from trackin.service.state import AppState, WsState
from trackin.service.transport.columnar import columns_of
from trackin.service.transport.results import (
    columns_json,
    columns_msgpack,
    is_series,
    results_json,
    shape_width,
)
from trackin.service.transport.wire import WsMessage, decode_json, decode_msgpack

router = APIRouter()

CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009

Pending = tuple[Any, bool, "asyncio.Future[Any] | dict[str, Any]", "IngestBatch | None", float, bool]


class _SeqOnly(msgspec.Struct):
    """Reads nothing but ``seq``: other fields are skipped unchecked (a 1e999 elsewhere does not hide it)."""

    seq: Any = None


def _seq_of(data: bytes | str, binary: bool) -> Any:
    """The message's ``seq`` if it can be read at all, for error answers to messages that failed checks."""
    try:
        if isinstance(data, bytes):
            return msgspec.msgpack.decode(data, type=_SeqOnly).seq
        return msgspec.json.decode(data, type=_SeqOnly).seq
    except msgspec.DecodeError:
        return None


@router.websocket("/v1/ws")
async def ingest(websocket: WebSocket, state: WsState) -> None:
    # A key offered as the subprotocol trackin.bearer.<key> (service/security/guard.py) is echoed back.
    await websocket.accept(subprotocol=websocket.scope.get("trackin.subprotocol"))
    state.metrics.websocket_opened()
    handler = asyncio.current_task()
    if handler is not None:
        state.websockets.add(handler)
    pending: asyncio.Queue[Pending | None] = asyncio.Queue(maxsize=state.settings.max_ws_in_flight)
    writer = asyncio.create_task(_write(websocket, state, pending))
    try:
        await _read(websocket, state, pending, writer)
    except WebSocketDisconnect:
        pass
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await pending.put(None)
            await writer
        if handler is not None:
            state.websockets.discard(handler)
        state.metrics.websocket_closed()


async def close_websockets(state: AppState, timeout: float) -> None:
    """Shutdown: every connection stops reading, answers what it accepted, and closes with 1001."""
    state.closing.set()
    if state.websockets:
        await asyncio.wait(set(state.websockets), timeout=timeout)


async def _read(
    websocket: WebSocket, state: AppState, pending: asyncio.Queue[Pending | None], writer: asyncio.Task[None]
) -> None:
    limit = state.settings.max_ws_message_bytes
    # Shutdown interrupts a reader waiting for a frame by cancelling it (once, from a callback), instead of
    # racing every receive against the closing event: that cost a task and an ``asyncio.wait`` (two loop
    # iterations) per frame, and kept frames already buffered from being read without a suspension.
    reader = asyncio.current_task()
    assert reader is not None
    stop = _ShutdownStop(reader)
    closing = asyncio.ensure_future(state.closing.wait())
    closing.add_done_callback(stop.fire)
    try:
        await _read_messages(websocket, state, pending, writer, stop, limit)
    finally:
        closing.remove_done_callback(stop.fire)
        closing.cancel()


class _ShutdownStop:
    """Cancels the reader when shutdown begins, but only while it waits for a frame (never mid-message)."""

    __slots__ = ("fired", "reader", "waiting")

    def __init__(self, reader: asyncio.Task[Any]) -> None:
        self.reader = reader
        self.waiting = False
        self.fired = False

    def fire(self, closing: asyncio.Future[Any]) -> None:
        if closing.cancelled():
            return
        self.fired = True
        if self.waiting:
            self.reader.cancel()

    async def receive(self, websocket: WebSocket) -> Message | None:
        """The next ASGI message; ``None`` once shutdown began (then nothing more is read)."""
        if self.fired:
            return None
        self.waiting = True
        try:
            return await websocket.receive()
        except asyncio.CancelledError:
            # ours (shutdown) is taken back; any other cancellation goes on up
            if not self.fired or self.reader.uncancel() > 0:
                raise
            return None
        finally:
            self.waiting = False


async def _read_messages(
    websocket: WebSocket,
    state: AppState,
    pending: asyncio.Queue[Pending | None],
    writer: asyncio.Task[None],
    stop: _ShutdownStop,
    limit: int,
) -> None:
    caller = principal_of(websocket.scope)
    namespace = caller.namespace
    while True:
        message = await stop.receive(websocket)
        if message is None:
            await _close_after_answers(websocket, pending, writer, CLOSE_GOING_AWAY, "server shutting down")
        if message["type"] == "websocket.disconnect":
            return
        binary = message.get("bytes") is not None
        data: bytes | str = message["bytes"] if binary else message.get("text") or ""
        started = time.perf_counter()
        if len(data) > limit:
            reason = f"message exceeds {limit} bytes"
            await _close_after_answers(websocket, pending, writer, CLOSE_TOO_BIG, reason)
        seq = None
        batch: IngestBatch | None = None
        columnar = False
        try:
            decoded: WsMessage = (
                decode_msgpack(data, WsMessage) if isinstance(data, bytes) else decode_json(data, WsMessage)
            )
            seq = decoded.seq
            columns = columns_of(decoded)
            outcome: asyncio.Future[Any] | dict[str, Any]
            if columns is not None:
                if len(columns.streams) > state.settings.max_request_observations:
                    raise PayloadTooLarge("too many observations in one message", field="streams")
                columns.streams = namespace.streams(columns.streams, "streams")
                if state.limiter is not None:
                    await state.limiter.admit_observations(caller.tenant, len(columns.streams))
                batch, outcome = await state.registry.enqueue_columns(columns, transport="ws")
                columnar = True
            else:
                items = decoded.observations or []
                if len(items) > state.settings.max_request_observations:
                    raise PayloadTooLarge("too many observations in one message", field="observations")
                if not items:
                    raise InvalidInput("no observations", field="observations")
                namespace.items(items, "observations")
                if state.limiter is not None:
                    await state.limiter.admit_observations(caller.tenant, len(items))
                batch, outcome = await state.registry.enqueue(
                    items, default_stream=None, prefix="observations", transport="ws"
                )
        except ServiceError as exc:
            if isinstance(exc, InvalidInput) and exc.message.startswith("malformed"):
                reason = "unparsable frame"
                await _close_after_answers(websocket, pending, writer, CLOSE_INVALID_PAYLOAD, reason)
            if seq is None:
                seq = _seq_of(data, binary)
            state.metrics.observed("rejected", "ws")
            outcome = namespace.public_error(exc).body()
        await pending.put((seq, binary, outcome, batch, started, columnar))


async def _close_after_answers(
    websocket: WebSocket,
    pending: asyncio.Queue[Pending | None],
    writer: asyncio.Task[None],
    code: int,
    reason: str,
) -> NoReturn:
    """Protocol abuse: answer every message accepted before it (in order), then close with ``code``."""
    await pending.put(None)
    await writer
    await websocket.close(code, reason)
    raise WebSocketDisconnect(code)


async def _write(websocket: WebSocket, state: AppState, pending: asyncio.Queue[Pending | None]) -> None:
    gone = False  # the client left: keep taking entries (unanswered) so the reader never blocks on us
    while True:
        entry = await pending.get()
        if entry is None:
            return
        seq, binary, outcome, batch, started, columnar = entry
        frame: bytes | None = None
        if isinstance(outcome, dict):
            body: dict[str, Any] = {"seq": seq, **outcome}
            state.metrics.websocket_message(ok=False)
        else:
            try:
                outcomes = await outcome
                assert batch is not None
                if columnar:
                    spec = batch.specs[batch.stream_ids[0]]
                    width, series = shape_width(spec), is_series(spec)
                    frame = (
                        columns_msgpack(outcomes, width, series, seq)
                        if binary
                        else columns_json(outcomes, width, series, seq=seq)
                    )
                else:
                    results = results_json(batch.stream_ids, batch.specs, outcomes, many=True)
                    namespace = principal_of(websocket.scope).namespace
                    body = {"seq": seq, "results": namespace.public_results(results)}
                state.metrics.websocket_message(ok=True)
                state.metrics.ingested("ws", time.perf_counter() - started)
            except ServiceError as exc:
                body = {"seq": seq, **principal_of(websocket.scope).namespace.public_error(exc).body()}
                state.metrics.websocket_message(ok=False)
        if frame is None:
            frame = msgspec.msgpack.encode(body) if binary else msgspec.json.encode(body)
        if gone:
            continue
        try:
            if binary:
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame.decode())
        except (WebSocketDisconnect, RuntimeError):
            gone = True


__all__ = ["close_websockets", "router"]
