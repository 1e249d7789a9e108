"""WebSocket ingestion: ``{"seq", "observations"}`` in, ``{"seq", "results"}`` out, in order, per message;
or the columnar form ``{"seq", "streams", "x", "y"}`` (MessagePack columns may be raw little-endian float
buffers), answered with columns (raw buffers in MessagePack).

A reader validates and queues each message's observations with the scheduler at once (fixing their order),
then hands the pending answer to a writer through a bounded queue: with ``max_ws_in_flight`` answers
outstanding, or ``max_ws_in_flight_bytes`` of their frames (service/transport/inflight.py), the reader stops
reading, so a fast client is slowed by TCP backpressure; nothing is dropped or reordered. Bad messages get
``{"seq", "error"}`` and the connection stays open; protocol abuse (oversized or unparsable frames) closes
it: 1009 (message too big) or 1007 (invalid payload data).
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
from trackin.service.transport.inflight import InFlightBytes
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

Pending = tuple[
    Any,
    bool,
    "asyncio.Future[Any] | dict[str, Any] | tuple[_Shared, int, int]",
    "IngestBatch | None",
    float,
    bool,
    int,
]
"""(seq, binary, the answer to come or an error body, its batch, when it was read, columnar, frame bytes)"""


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
    held = InFlightBytes(state.settings.max_ws_in_flight_bytes)
    writer = asyncio.create_task(_write(websocket, state, pending, held))
    try:
        await _read(websocket, state, pending, writer, held)
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
    websocket: WebSocket,
    state: AppState,
    pending: asyncio.Queue[Pending | None],
    writer: asyncio.Task[None],
    held: InFlightBytes,
) -> None:
    # Shutdown, and a coalesced group waiting to be queued, interrupt a reader waiting for a frame by
    # cancelling it (from a callback), instead of racing every receive against the closing event: that
    # cost a task and an ``asyncio.wait`` (two loop iterations) per frame, and kept frames already
    # buffered from being read without a suspension.
    reader = asyncio.current_task()
    assert reader is not None
    inbox = _Inbox(reader)
    closing = asyncio.ensure_future(state.closing.wait())
    closing.add_done_callback(inbox.shutdown)
    try:
        await _read_messages(websocket, state, pending, writer, inbox, held)
    finally:
        closing.remove_done_callback(inbox.shutdown)
        closing.cancel()


class _Inbox:
    """The reader's receive, interruptible while (and only while) it waits for a frame: by shutdown, or
    by a group of frames due to be queued (``flush_soon``)."""

    __slots__ = ("closing", "due", "reader", "scheduled", "waiting")

    def __init__(self, reader: asyncio.Task[Any]) -> None:
        self.reader = reader
        self.waiting = False
        self.closing = False
        self.due = False
        self.scheduled = False

    def shutdown(self, closing: asyncio.Future[Any]) -> None:
        if closing.cancelled():
            return
        self.closing = True
        self._interrupt()

    def flush_soon(self) -> None:
        """Queue the group once the reader has read every frame ready now (it would wait for the next)."""
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._due)

    def _due(self) -> None:
        self.scheduled = False
        self.due = True
        self._interrupt()

    def _interrupt(self) -> None:
        if self.waiting:
            self.waiting = False
            self.reader.cancel()

    async def receive(self, websocket: WebSocket) -> Message | None:
        """The next ASGI message, or ``None`` when interrupted: shutdown began (``closing``) or the group
        is due (``due``). An interruption never loses a frame: it stays in uvicorn's queue."""
        if self.closing or self.due:
            return None
        self.waiting = True
        try:
            return await websocket.receive()
        except asyncio.CancelledError:
            # ours is taken back; any other cancellation goes on up
            if self.waiting or self.reader.uncancel() > 0:
                raise
            return None
        finally:
            self.waiting = False


class _Group:
    """Row-form frames read back to back, queued as ONE engine batch (one check, one enqueue, one
    answer-building pass), each frame still answered on its own and in order. If the group is refused as
    a whole, its frames are queued one by one again, so each bad frame gets its own error (its fields
    named as in the frame) and the others are applied as if they had come alone."""

    __slots__ = ("entries", "observations")

    def __init__(self) -> None:
        self.entries: list[tuple[Any, bool, list[Any] | dict[str, Any], float, int]] = []
        self.observations = 0

    def add(
        self, seq: Any, binary: bool, items: list[Any] | dict[str, Any], started: float, size: int
    ) -> None:
        """A frame's items to queue, or its error (answered in its place in the order)."""
        self.entries.append((seq, binary, items, started, size))
        if isinstance(items, list):
            self.observations += len(items)


class _Shared:
    """One coalesced batch's outcome; its answer rows are built once, for all of its frames."""

    __slots__ = ("batch", "future", "rows")

    def __init__(self, batch: IngestBatch, future: asyncio.Future[Any]) -> None:
        self.batch = batch
        self.future = future
        self.rows: list[dict[str, Any]] | None = None

    async def slice(self, start: int, stop: int, websocket: WebSocket) -> list[dict[str, Any]]:
        if self.rows is None:
            outcomes = await self.future
            rows = results_json(
                self.batch.stream_ids, self.batch.specs, outcomes, many=True, uniform=self.batch.x is not None
            )
            self.rows = principal_of(websocket.scope).namespace.public_results(rows)
        return self.rows[start:stop]


async def _flush(
    websocket: WebSocket, state: AppState, pending: asyncio.Queue[Pending | None], group: _Group
) -> None:
    entries = group.entries
    if not entries:
        return
    group.entries, group.observations = [], 0
    frames = [e[2] for e in entries if isinstance(e[2], list)]
    shared: _Shared | None = None
    if len(frames) > 1:
        items = [item for frame in frames for item in frame]
        try:
            batch, future = await state.registry.enqueue(
                items, default_stream=None, prefix="observations", transport="ws"
            )
            shared = _Shared(batch, future)
        except ServiceError:
            shared = None  # refused as a whole: one frame at a time below, each with its own answer
    start = 0
    for seq, binary, items_or_error, started, size in entries:
        outcome: asyncio.Future[Any] | dict[str, Any] | tuple[_Shared, int, int]
        batch_of: IngestBatch | None = None
        if isinstance(items_or_error, dict):
            outcome = items_or_error
        elif shared is not None:
            outcome = (shared, start, start + len(items_or_error))
            start += len(items_or_error)
            batch_of = shared.batch
        else:
            try:
                batch_of, outcome = await state.registry.enqueue(
                    items_or_error, default_stream=None, prefix="observations", transport="ws"
                )
            except ServiceError as exc:
                state.metrics.observed("rejected", "ws")
                outcome = principal_of(websocket.scope).namespace.public_error(exc).body()
        await pending.put((seq, binary, outcome, batch_of, started, False, size))


async def _read_messages(
    websocket: WebSocket,
    state: AppState,
    pending: asyncio.Queue[Pending | None],
    writer: asyncio.Task[None],
    inbox: _Inbox,
    held: InFlightBytes,
) -> None:
    caller = principal_of(websocket.scope)
    namespace = caller.namespace
    settings = state.settings
    limit = settings.max_ws_message_bytes
    group = _Group()
    # Frames are grouped only where each is checked alone before the group: not under a rate limit (it
    # admits each frame's observations once, before queueing).
    coalesce = state.limiter is None

    async def close(code: int, reason: str) -> NoReturn:
        await _flush(websocket, state, pending, group)
        await _close_after_answers(websocket, pending, writer, code, reason)

    while True:
        if held.full():  # answer what is held (the group too) before reading more
            await _flush(websocket, state, pending, group)
            await held.room()
        message = await inbox.receive(websocket)
        if message is None:
            if inbox.closing:
                await close(CLOSE_GOING_AWAY, "server shutting down")
            inbox.due = False
            await _flush(websocket, state, pending, group)
            continue
        if message["type"] == "websocket.disconnect":
            await _flush(websocket, state, pending, group)
            return
        binary = message.get("bytes") is not None
        data: bytes | str = message["bytes"] if binary else message.get("text") or ""
        started = time.perf_counter()
        if len(data) > limit:
            await close(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")
        size = len(data)
        held.take(size)  # given back by the writer once the frame is answered
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
                await _flush(websocket, state, pending, group)
                if len(columns.streams) > settings.max_request_observations:
                    raise PayloadTooLarge("too many observations in one message", field="streams")
                columns.streams = namespace.streams(columns.streams, "streams")
                if state.limiter is not None:
                    await state.limiter.admit_observations(caller.tenant, len(columns.streams))
                batch, outcome = await state.registry.enqueue_columns(columns, transport="ws")
                columnar = True
            else:
                items = decoded.observations or []
                if len(items) > settings.max_request_observations:
                    raise PayloadTooLarge("too many observations in one message", field="observations")
                if not items:
                    raise InvalidInput("no observations", field="observations")
                namespace.items(items, "observations")
                if coalesce:
                    if group.observations + len(items) > settings.max_request_observations:
                        await _flush(websocket, state, pending, group)
                    group.add(seq, binary, list(items), started, size)
                    if len(group.entries) >= settings.max_ws_in_flight:
                        await _flush(websocket, state, pending, group)
                    else:
                        inbox.flush_soon()
                    continue
                if state.limiter is not None:
                    await state.limiter.admit_observations(caller.tenant, len(items))
                batch, outcome = await state.registry.enqueue(
                    items, default_stream=None, prefix="observations", transport="ws"
                )
        except ServiceError as exc:
            if isinstance(exc, InvalidInput) and exc.message.startswith("malformed"):
                await close(CLOSE_INVALID_PAYLOAD, "unparsable frame")
            if seq is None:
                seq = _seq_of(data, binary)
            state.metrics.observed("rejected", "ws")
            error = namespace.public_error(exc).body()
            if coalesce and group.entries:
                group.add(seq, binary, error, started, size)  # answered in its place among the grouped frames
                continue
            outcome = error
        await pending.put((seq, binary, outcome, batch, started, columnar, size))


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


async def _write(
    websocket: WebSocket, state: AppState, pending: asyncio.Queue[Pending | None], held: InFlightBytes
) -> None:
    gone = False  # the client left: keep taking entries (unanswered) so the reader never blocks on us
    while True:
        entry = await pending.get()
        if entry is None:
            return
        seq, binary, outcome, batch, started, columnar, size = entry
        frame: bytes | None = None
        if isinstance(outcome, dict):
            body: dict[str, Any] = {"seq": seq, **outcome}
            state.metrics.websocket_message(ok=False)
        elif isinstance(outcome, tuple):
            shared, begin, end = outcome
            try:
                body = {"seq": seq, "results": await shared.slice(begin, end, websocket)}
                state.metrics.websocket_message(ok=True)
                state.metrics.ingested("ws", time.perf_counter() - started)
            except ServiceError as exc:
                body = {"seq": seq, **principal_of(websocket.scope).namespace.public_error(exc).body()}
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
                    results = results_json(
                        batch.stream_ids, batch.specs, outcomes, many=True, uniform=batch.x is not None
                    )
                    namespace = principal_of(websocket.scope).namespace
                    body = {"seq": seq, "results": namespace.public_results(results)}
                state.metrics.websocket_message(ok=True)
                state.metrics.ingested("ws", time.perf_counter() - started)
            except ServiceError as exc:
                body = {"seq": seq, **principal_of(websocket.scope).namespace.public_error(exc).body()}
                state.metrics.websocket_message(ok=False)
        if frame is None:
            frame = msgspec.msgpack.encode(body) if binary else msgspec.json.encode(body)
        if not gone:
            try:
                if binary:
                    await websocket.send_bytes(frame)
                else:
                    await websocket.send_text(frame.decode())
            except (WebSocketDisconnect, RuntimeError):
                gone = True
        held.give(size)


__all__ = ["close_websockets", "router"]
