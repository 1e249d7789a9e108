"""Streams and templates: create, read, list, delete; predictions without learning; late labels."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse

from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Template
from trackin.service.errors import InvalidInput, ServiceError
from trackin.service.ids import MAX_ID_LENGTH
from trackin.service.security.namespace import Namespace, Principal
from trackin.service.state import AppState, Caller, State
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
from trackin.service.transport.results import JsonAnswer, result_json, shape_prediction
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


def _described(body: dict[str, Any], namespace: Namespace) -> dict[str, Any]:
    """A stream's description with the client's ids (its own and its template's)."""
    body["stream"] = namespace.outside(body["stream"])
    if body.get("template"):
        body["template"] = namespace.outside(body["template"])
    return body


def _page_ids(value: str, field: str) -> str:
    """A listing's prefix or cursor: client ids only (never another namespace's ``~``)."""
    if value and not _ID_CHARS.fullmatch(value):
        raise InvalidInput(f"{field}: only the characters of stream ids (A-Z a-z 0-9 . _ : -)", field=field)
    return value


_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]*")


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
    caller: Caller,
    replace: bool = False,
) -> JSONResponse:
    internal = caller.namespace.inside(stream_id)
    outcome = await state.registry.put_stream(internal, spec, replace=replace)
    body = _described(await state.registry.describe(internal), caller.namespace)
    return JSONResponse({"outcome": outcome, **body}, status_code=201 if outcome == "created" else 200)


@router.put(
    "/streams",
    summary="Create many streams at once, all or nothing (never replaces: 409 if an id has another spec)",
    response_model=None,
    responses=answers(BulkOut, 409, 413, 422, 503, 507, created=True),
)
async def put_streams(body: BulkStreamsIn, state: State, caller: Caller) -> JSONResponse:
    namespace = caller.namespace
    items = [
        (namespace.inside(item.id, field=f"streams[{i}].id"), item.spec)
        for i, item in enumerate(body.streams)
    ]
    outcomes = await state.registry.put_streams(items)
    created = sum(1 for outcome in outcomes.values() if outcome == "created")
    answer = {"created": created, "unchanged": len(outcomes) - created}
    return JSONResponse(answer, status_code=201 if created else 200)


@router.get(
    "/streams/{stream_id}",
    summary="A stream's spec and figures",
    response_model=None,
    responses=answers(StreamOut, 404, 422, 503),
)
async def get_stream(stream_id: str, state: State, caller: Caller) -> Response:
    return Response(await describe_answer(state, caller, stream_id), media_type="application/json")


async def describe_answer(state: AppState, caller: Principal, stream_id: str) -> bytes:
    """``GET /v1/streams/{stream_id}``'s answer body, or a ``ServiceError``; served by the route above and
    ahead of the app's stack (service/transport/fastpath.py)."""
    internal = caller.namespace.inside(stream_id)
    return orjson.dumps(_described(await state.registry.describe(internal), caller.namespace))


@router.delete(
    "/streams/{stream_id}",
    status_code=204,
    summary="Remove a stream and its stored state",
    responses=errors(404, 422, 503),
)
async def delete_stream(stream_id: str, state: State, caller: Caller) -> Response:
    await state.registry.delete_stream(caller.namespace.inside(stream_id))
    return Response(status_code=204)


@router.get(
    "/streams",
    summary="List stream ids by prefix, paginated",
    response_model=None,
    responses=answers(StreamListOut, 422, 503),
)
async def list_streams(
    state: State,
    caller: Caller,
    prefix: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
) -> JsonAnswer:
    namespace = caller.namespace
    start = namespace.prefix + _page_ids(cursor, "cursor") if cursor else None
    ids, next_cursor = await state.registry.list_streams(
        namespace.prefix + _page_ids(prefix, "prefix"), limit, start
    )
    # The default namespace's ids sort before every other ("~"): a page reaching them is its last.
    own = [namespace.outside(s) for s in ids if namespace.owns(s)]
    more = next_cursor is not None and len(own) == len(ids)
    return JsonAnswer({"streams": own, "next_cursor": own[-1] if more and own else None})


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
async def predict(stream_id: str, request: Request, state: State, caller: Caller) -> Response:
    with _naming(stream_id):
        raw = await read_body(request, state.settings.max_body_bytes)
    body = await predict_answer(state, caller, stream_id, raw, request.headers.get("content-type"))
    return Response(body, media_type="application/json")


async def predict_answer(
    state: AppState, caller: Principal, stream_id: str, raw: bytes, content_type: str | bytes | None
) -> bytes:
    """``POST /v1/streams/{stream_id}/predict``'s answer body, or a ``ServiceError`` naming the URL's
    stream; served by the route above and ahead of the app's stack (service/transport/fastpath.py)."""
    internal = caller.namespace.inside(stream_id)
    with _naming(stream_id):
        # An empty body (a series stream predicts from its own history) needs no content type.
        fmt = body_format(content_type) if raw else "json"
        body: PredictIn = decode_body(raw or b"{}", fmt, PredictIn)
        spec, values = await state.registry.predict(internal, body.x, body.request_id)
    out: dict[str, Any] = {"stream": stream_id, "prediction": shape_prediction(spec, values)}
    if body.request_id is not None:
        out["request_id"] = body.request_id
    return orjson.dumps(out)


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
async def label(stream_id: str, request: Request, state: State, caller: Caller) -> JsonAnswer:
    internal = caller.namespace.inside(stream_id)
    with _naming(stream_id):
        fmt = body_format(request.headers.get("content-type"))
        raw = await read_body(request, state.settings.max_body_bytes)
        body: LabelIn = decode_body(raw, fmt, LabelIn)
        try:
            spec, result = await state.registry.label(internal, body.request_id, body.y)
        except ServiceError as exc:
            # The label is checked as an observation (label[0].y); name the field as the client sent it.
            exc.field = exc.field.removeprefix("label[0].") if exc.field else exc.field
            raise
    return JsonAnswer({"request_id": body.request_id, **result_json(spec, result)})


@router.put(
    "/templates/{name}",
    summary="Create or replace a template for streams created on the fly",
    response_model=None,
    responses=answers(TemplatePutOut, 413, 422, 503, created=True),
)
async def put_template(name: str, template: TemplateIn, state: State, caller: Caller) -> JSONResponse:
    namespace = caller.namespace
    outcome = await state.registry.put_template(
        Template(
            name=namespace.inside(name, field="name"),
            prefix=namespace.prefix + template.prefix,
            spec=template.spec,
            idle_seconds=template.idle_seconds,
        )
    )
    return JSONResponse(
        {"outcome": outcome, "name": name, **template.model_dump(mode="json")},
        status_code=201 if outcome == "created" else 200,
    )


@router.get("/templates", summary="All templates", response_model=None, responses=answers(TemplateListOut))
async def list_templates(state: State, caller: Caller) -> dict[str, Any]:
    namespace = caller.namespace
    return {
        "templates": [
            {
                "name": namespace.outside(t.name),
                "prefix": namespace.outside(t.prefix),
                "idle_seconds": t.idle_seconds,
                "spec": t.spec.model_dump(mode="json"),
            }
            for t in state.registry.templates()
            if namespace.owns(t.name)
        ]
    }


@router.delete(
    "/templates/{name}",
    status_code=204,
    summary="Remove a template (its streams stay)",
    responses=errors(404, 422, 503),
)
async def delete_template(name: str, state: State, caller: Caller) -> Response:
    await state.registry.delete_template(caller.namespace.inside(name, field="name"))
    return Response(status_code=204)
