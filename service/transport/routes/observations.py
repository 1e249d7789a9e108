"""The REST hot path: observations for one stream or many, answered with pre-learning predictions."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from trackin.service.domain.columns import Columns
from trackin.service.errors import InvalidInput, PayloadTooLarge, ServiceError
from trackin.service.ids import check_stream_id
from trackin.service.security.namespace import Principal
from trackin.service.state import AppState, Caller, State
from trackin.service.transport.body import read_body
from trackin.service.transport.columnar import columns_of
from trackin.service.transport.media import BodyFormat, body_format, decode_body
from trackin.service.transport.openapi import ColumnsOut, ResultsOut, documented_body, errors, inline_schema
from trackin.service.transport.results import columns_json, is_series, results_json, shape_width
from trackin.service.transport.wire import ObservationIn, ObservationsBody, encode_json

router = APIRouter(prefix="/v1", tags=["observations"])


_ITEM_SCHEMA = inline_schema(ObservationIn)
_ONE_STREAM_DOC = documented_body(
    {"anyOf": [_ITEM_SCHEMA, {"type": "array", "items": _ITEM_SCHEMA}]},
    {
        "one": {"summary": "One observation", "value": {"x": [0.1, 0.2, 0.3], "y": 1.5}},
        "several": {"summary": "Several, applied in order", "value": [{"x": [0.1, 0.2, 0.3], "y": 1.5}]},
        "ar": {"summary": "A series stream's new value", "value": {"value": [4321.25], "ts": 1700000000.0}},
    },
)
_MANY_STREAMS_DOC = documented_body(
    inline_schema(ObservationsBody),
    {
        "many": {
            "summary": "Observations of several streams, answered in order",
            "value": {
                "observations": [
                    {"stream": "ES", "value": [4321.25]},
                    {"stream": "sensor-7", "x": [0.1, 0.2], "y": 0.3},
                ]
            },
        },
        "columns": {
            "summary": "Columnar: streams of one shape, one row each (answered as columns)",
            "value": {
                "streams": ["s1", "s2", "s1"],
                "x": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
                "y": [1, 2, 3],
            },
        },
    },
)


def _is_list(raw: bytes, fmt: BodyFormat) -> bool:
    if fmt == "msgpack":  # fixarray, array 16, array 32
        return bool(raw) and (0x90 <= raw[0] <= 0x9F or raw[0] in (0xDC, 0xDD))
    return raw.lstrip()[:1] == b"["


async def _ingest(
    state: AppState,
    caller: Principal,
    items: list[ObservationIn],
    default_stream: str | None,
    started: float,
) -> bytes:
    """``default_stream``: the internal id of the URL's stream (None: each item names its own)."""
    limit = state.settings.max_request_observations
    namespace = caller.namespace
    try:
        if len(items) > limit:
            raise PayloadTooLarge(
                f"{len(items)} observations exceed the limit of {limit} per request",
                field="observations",
                stream=default_stream,
            )
        if not items:
            raise InvalidInput("no observations", field="observations", stream=default_stream)
        namespace.items(items, "observations")
        if state.limiter is not None:
            await state.limiter.admit_observations(caller.tenant, len(items))
        batch, applied = await state.registry.enqueue(
            items, default_stream=default_stream, prefix="observations"
        )
    except ServiceError as exc:
        state.metrics.observed("rejected", "rest", max(1, len(items)))
        raise namespace.public_error(exc) from None
    outcomes = await applied
    many = default_stream is None
    uniform = batch.x is not None  # columnar: one kind and width
    results = results_json(batch.stream_ids, batch.specs, outcomes, many=many, uniform=uniform)
    body = {"results": namespace.public_results(results) if many else results}
    state.metrics.ingested("rest", time.perf_counter() - started)
    return encode_json(body)


async def observe_one(
    state: AppState, caller: Principal, stream_id: str, raw: bytes, fmt: BodyFormat, started: float
) -> bytes:
    """``POST /v1/streams/{stream_id}/observations``: the answer's body, or a ``ServiceError``."""
    internal = caller.namespace.inside(stream_id)
    try:
        # Decode as what the body starts with, so error paths read as build_batch's (observations[0].x).
        payload: ObservationIn | list[ObservationIn] = (
            decode_body(raw, fmt, list[ObservationIn], prefix="observations")
            if _is_list(raw, fmt)
            else decode_body(raw, fmt, ObservationIn, prefix="observations[0]")
        )
    except ServiceError as exc:
        exc.stream = exc.stream or stream_id
        state.metrics.observed("rejected", "rest")
        raise
    items = payload if isinstance(payload, list) else [payload]
    return await _ingest(state, caller, items, internal, started)


async def observe_many_streams(
    state: AppState, caller: Principal, raw: bytes, fmt: BodyFormat, started: float
) -> bytes:
    """``POST /v1/observations``: the answer's body, or a ``ServiceError``."""
    try:
        payload: ObservationsBody | list[ObservationIn] = (
            decode_body(raw, fmt, list[ObservationIn], prefix="observations")
            if _is_list(raw, fmt)
            else decode_body(raw, fmt, ObservationsBody)
        )
        columns = columns_of(payload) if isinstance(payload, ObservationsBody) else None
    except ServiceError:
        state.metrics.observed("rejected", "rest")
        raise
    if columns is not None:
        return await _ingest_columns(state, caller, columns, started)
    items = payload.observations if isinstance(payload, ObservationsBody) else payload
    assert items is not None
    return await _ingest(state, caller, items, None, started)


async def _ingest_columns(state: AppState, caller: Principal, columns: Columns, started: float) -> bytes:
    n, limit = len(columns.streams), state.settings.max_request_observations
    try:
        if n > limit:
            raise PayloadTooLarge(
                f"{n} observations exceed the limit of {limit} per request", field="streams"
            )
        columns.streams = caller.namespace.streams(columns.streams, "streams")
        if state.limiter is not None:
            await state.limiter.admit_observations(caller.tenant, n)
        batch, applied = await state.registry.enqueue_columns(columns)
    except ServiceError as exc:
        state.metrics.observed("rejected", "rest", n)
        raise caller.namespace.public_error(exc) from None
    outcomes = await applied
    spec = batch.specs[columns.streams[0]]
    body = columns_json(outcomes, shape_width(spec), is_series(spec))
    state.metrics.ingested("rest", time.perf_counter() - started)
    return body


_ERRORS = errors(404, 413, 415, 422, 503, 507)


def _ref(model: Any) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


# The routes below document the endpoints in OpenAPI and serve them when the app runs without the fast path
# (service/transport/fastpath.py answers them first in the served app, skipping routing and dependencies).


@router.post(
    "/streams/{stream_id}/observations",
    summary="Observe one stream: predict, score, then learn (one step per observation)",
    openapi_extra=_ONE_STREAM_DOC,
    response_model=None,
    responses={200: {"model": ResultsOut, "description": "One answer per observation"}, **_ERRORS},
)
async def observe_stream(stream_id: str, request: Request, state: State, caller: Caller) -> Response:
    started = time.perf_counter()
    check_stream_id(stream_id)
    try:
        fmt = body_format(request.headers.get("content-type"), stream=stream_id)
        raw = await read_body(request, state.settings.max_body_bytes)
    except ServiceError as exc:
        exc.stream = exc.stream or stream_id
        state.metrics.observed("rejected", "rest")
        raise
    body = await observe_one(state, caller, stream_id, raw, fmt, started)
    return Response(body, media_type="application/json")


@router.post(
    "/observations",
    summary="Observe many streams at once; validated as a whole before applying",
    openapi_extra=_MANY_STREAMS_DOC,
    response_model=None,
    responses={
        200: {
            "description": "One answer per observation (columns for a columnar body)",
            "content": {"application/json": {"schema": {"anyOf": [_ref(ResultsOut), _ref(ColumnsOut)]}}},
        },
        **_ERRORS,
    },
)
async def observe_many(request: Request, state: State, caller: Caller) -> Response:
    started = time.perf_counter()
    try:
        fmt = body_format(request.headers.get("content-type"))
    except ServiceError:
        state.metrics.observed("rejected", "rest")
        raise
    raw = await read_body(request, state.settings.max_body_bytes)
    body = await observe_many_streams(state, caller, raw, fmt, started)
    return Response(body, media_type="application/json")
