"""Streams and templates: create, read, list, delete; predictions without learning; late labels."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse

from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Template
from trackin.service.errors import ServiceError
from trackin.service.ids import MAX_ID_LENGTH, check_stream_id
from trackin.service.state import State
from trackin.service.transport.body import read_body
from trackin.service.transport.media import body_format, decode_body
from trackin.service.transport.openapi import (
    BulkOut,
    LabelOut,
    PredictionOut,
    StreamListOut,
    StreamOut,
    StreamPutOut,
    TemplateListOut,
    TemplatePutOut,
    answers,
    documented_body,
    errors,
    inline_schema,
)
from trackin.service.transport.results import result_json, shape_prediction
from trackin.service.transport.schemas import STREAM_EXAMPLES, BulkStreamsIn, TemplateIn
from trackin.service.transport.wire import LabelIn, PredictIn

router = APIRouter(prefix="/v1", tags=["streams"])


@contextlib.contextmanager
def _naming(stream_id: str) -> Iterator[None]:
    """Errors raised inside name the stream of the URL unless they name one already."""
    try:
        yield
    except ServiceError as exc:
        exc.stream = exc.stream or stream_id
        raise


@router.put(
    "/streams/{stream_id}",
    summary="Create (or replace) a stream from a spec",
    response_model=None,
    responses=answers(StreamPutOut, 409, 413, 422, 503, 507, created=True),
)
async def put_stream(
    stream_id: str,
    spec: Annotated[StreamSpec, Body(openapi_examples=STREAM_EXAMPLES)],
    state: State,
    replace: bool = False,
) -> JSONResponse:
    outcome = await state.registry.put_stream(stream_id, spec, replace=replace)
    body = await state.registry.describe(stream_id)
    return JSONResponse({"outcome": outcome, **body}, status_code=201 if outcome == "created" else 200)


@router.put(
    "/streams",
    summary="Create many streams at once, all or nothing (never replaces: 409 if an id has another spec)",
    response_model=None,
    responses=answers(BulkOut, 409, 413, 422, 503, 507, created=True),
)
async def put_streams(body: BulkStreamsIn, state: State) -> JSONResponse:
    outcomes = await state.registry.put_streams([(item.id, item.spec) for item in body.streams])
    created = sum(1 for outcome in outcomes.values() if outcome == "created")
    answer = {"created": created, "unchanged": len(outcomes) - created}
    return JSONResponse(answer, status_code=201 if created else 200)


@router.get(
    "/streams/{stream_id}",
    summary="A stream's spec and figures",
    response_model=None,
    responses=answers(StreamOut, 404, 422, 503),
)
async def get_stream(stream_id: str, state: State) -> dict[str, Any]:
    check_stream_id(stream_id)
    return await state.registry.describe(stream_id)


@router.delete(
    "/streams/{stream_id}",
    status_code=204,
    summary="Remove a stream and its stored state",
    responses=errors(404, 422, 503),
)
async def delete_stream(stream_id: str, state: State) -> Response:
    await state.registry.delete_stream(stream_id)
    return Response(status_code=204)


@router.get(
    "/streams",
    summary="List stream ids by prefix, paginated",
    response_model=None,
    responses=answers(StreamListOut, 422, 503),
)
async def list_streams(
    state: State,
    prefix: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
) -> dict[str, Any]:
    ids, next_cursor = await state.registry.list_streams(prefix, limit, cursor)
    return {"streams": ids, "next_cursor": next_cursor}


@router.post(
    "/streams/{stream_id}/predict",
    summary="Predict without learning",
    openapi_extra=documented_body(
        inline_schema(PredictIn),
        {
            "x": {"summary": "A model stream's inputs", "value": {"x": [0.1, 0.2, 0.3], "request_id": "r-1"}},
            "series": {"summary": "A series stream predicts from its own history", "value": {}},
        },
        required=False,
    ),
    response_model=None,
    responses=answers(PredictionOut, 404, 413, 415, 422, 503, 507),
)
async def predict(stream_id: str, request: Request, state: State) -> dict[str, Any]:
    check_stream_id(stream_id)
    with _naming(stream_id):
        # An empty body (a series stream predicts from its own history) needs no content type.
        raw = await read_body(request, state.settings.max_body_bytes)
        fmt = body_format(request.headers.get("content-type")) if raw else "json"
        body: PredictIn = decode_body(raw or b"{}", fmt, PredictIn)
        spec, values = await state.registry.predict(stream_id, body.x, body.request_id)
    out: dict[str, Any] = {"stream": stream_id, "prediction": shape_prediction(spec, values)}
    if body.request_id is not None:
        out["request_id"] = body.request_id
    return out


@router.post(
    "/streams/{stream_id}/labels",
    summary="Apply the step for an earlier prediction's inputs",
    openapi_extra=documented_body(
        inline_schema(LabelIn),
        {"label": {"summary": "The target of prediction r-1", "value": {"request_id": "r-1", "y": 1.5}}},
    ),
    response_model=None,
    responses=answers(LabelOut, 404, 413, 415, 422, 503),
)
async def label(stream_id: str, request: Request, state: State) -> dict[str, Any]:
    check_stream_id(stream_id)
    with _naming(stream_id):
        fmt = body_format(request.headers.get("content-type"))
        raw = await read_body(request, state.settings.max_body_bytes)
        body: LabelIn = decode_body(raw, fmt, LabelIn)
        try:
            spec, result = await state.registry.label(stream_id, body.request_id, body.y)
        except ServiceError as exc:
            # The label is checked as an observation (label[0].y); name the field as the client sent it.
            exc.field = exc.field.removeprefix("label[0].") if exc.field else exc.field
            raise
    return {"request_id": body.request_id, **result_json(spec, result)}


@router.put(
    "/templates/{name}",
    summary="Create or replace a template for streams created on the fly",
    response_model=None,
    responses=answers(TemplatePutOut, 413, 422, 503, created=True),
)
async def put_template(name: str, template: TemplateIn, state: State) -> JSONResponse:
    check_stream_id(name, field="name")
    outcome = await state.registry.put_template(
        Template(name=name, prefix=template.prefix, spec=template.spec, idle_seconds=template.idle_seconds)
    )
    return JSONResponse(
        {"outcome": outcome, "name": name, **template.model_dump(mode="json")},
        status_code=201 if outcome == "created" else 200,
    )


@router.get("/templates", summary="All templates", response_model=None, responses=answers(TemplateListOut))
async def list_templates(state: State) -> dict[str, Any]:
    return {
        "templates": [
            {
                "name": t.name,
                "prefix": t.prefix,
                "idle_seconds": t.idle_seconds,
                "spec": t.spec.model_dump(mode="json"),
            }
            for t in state.registry.templates()
        ]
    }


@router.delete(
    "/templates/{name}",
    status_code=204,
    summary="Remove a template (its streams stay)",
    responses=errors(404, 422, 503),
)
async def delete_template(name: str, state: State) -> Response:
    await state.registry.delete_template(name)
    return Response(status_code=204)
