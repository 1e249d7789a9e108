"""The cluster app's routes: the stream API of single-node mode, forwarded; health; the partition map.

Thin, as the single-node routes: read the request, hand it to the `Front`, return the owner's answer.
The caller's namespace (set by the `Guard`, as in single-node mode) qualifies the URL's id before it is
hashed to a partition, so a tenant's stream maps to the same partition on every replica and no tenant can
name another's; the owner's answer is given back with the caller's own ids.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import pydantic
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trackin.service.cluster.columns import submit_columns
from trackin.service.cluster.many import body_items, decode_observations, finished, observe_items
from trackin.service.cluster.messages import Answer
from trackin.service.cluster.partitions import HASH_NAME
from trackin.service.cluster.state import ClusterState
from trackin.service.domain.budget import check_stream_bytes
from trackin.service.domain.catalog import Template
from trackin.service.errors import InvalidInput, ServiceError
from trackin.service.security.namespace import Namespace, principal_of
from trackin.service.transport.body import read_body
from trackin.service.transport.media import body_format, decode_body
from trackin.service.transport.schemas import TemplateIn
from trackin.service.transport.wire import LabelIn, ObservationsBody, PredictIn, decode_json

__all__ = ["router"]

router = APIRouter()


async def _state(request: Request) -> ClusterState:
    state: ClusterState = request.app.state.cluster
    return state


State = Annotated[ClusterState, Depends(_state)]


def _namespace(request: Request) -> Namespace:
    return principal_of(request.scope).namespace


def _response(answer: Answer, namespace: Namespace) -> Response:
    """The owner's answer with the caller's ids: ``~`` and ``/`` are outside the client id alphabet, so
    the prefix occurs in a body only as the namespace (the single-node error path strips it the same way)."""
    body = answer.body
    if namespace.prefix and body:
        body = body.replace(namespace.prefix.encode(), b"")
    media = "application/json" if body else None
    return Response(body, status_code=answer.status, headers=answer.headers, media_type=media)


@router.get("/healthz", tags=["operations"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="Connected to NATS, and every owned partition serving")
async def readyz(request: Request, state: State) -> JSONResponse:
    checks = state.checks()
    keyring = getattr(request.app.state, "keyring", None)
    if keyring is not None and not keyring.loaded:  # every guarded request would get 503
        checks["keys"] = "not read"
    ok = all(v == "up" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/cluster/partitions", tags=["cluster"], summary="Partition map for owner-aware clients")
async def partitions(request: Request, state: State) -> dict[str, Any]:
    """``namespace``: what the caller's ids are prefixed with before hashing (the owner-aware client's
    ``crc32(namespace + id) mod P``)."""
    body = state.leases.map.as_json(state.leases.replica, HASH_NAME)
    return {**body, "namespace": _namespace(request).prefix}


@router.put("/v1/streams/{stream_id}", tags=["streams"], summary="Create (or replace) a stream from a spec")
async def put_stream(stream_id: str, request: Request, state: State, replace: bool = False) -> Response:
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    if state.quotas is not None:  # counted for the whole cluster, before the creation is logged
        await state.quotas.check(internal, raw)
    return _response(await state.front.write("put", internal, raw, ns, replace=replace), ns)


@router.delete("/v1/streams/{stream_id}", tags=["streams"], summary="Remove a stream and its stored state")
async def delete_stream(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    answer = await state.front.write("delete", internal, b"", ns)
    if answer.status == 204:
        await state.pending.drop_stream(internal)
    return _response(answer, ns)


@router.post("/v1/streams/{stream_id}/observations", tags=["observations"], summary="Observe one stream")
async def observe(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    if state.front.limits_observations:  # the body is parsed only then (its owner parses it anyway)
        await state.front.admit(ns, _count(raw))
    return _response(await state.front.write("observe", internal, raw, ns), ns)


def _count(raw: bytes) -> int:
    """Observations in a single-stream body, for the tenant's rate (a body that does not parse counts one:
    its owner refuses it with single-node's 422)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 1
    return len(body) if isinstance(body, list) else 1


@router.get("/v1/streams/{stream_id}", tags=["streams"], summary="A stream's spec and figures")
async def get_stream(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    return _response(await state.front.read("describe", ns.inside(stream_id)), ns)


@router.post("/v1/streams/{stream_id}/predict", tags=["streams"], summary="Predict without learning")
async def predict(stream_id: str, request: Request, state: State) -> Response:
    """With a ``request_id``, the inputs are kept in the cluster's labels bucket once the owner answered,
    so the label may come through any replica (service/cluster/labels.py)."""
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    answer = await state.front.read("predict", internal, raw)
    if answer.status == 200 and raw:
        body: PredictIn = decode_json(raw, PredictIn)  # the owner decoded it already
        if body.request_id is not None and body.x is not None:
            await state.pending.keep(internal, body.request_id, body.x)
            answer = Answer(200, orjson.dumps({**orjson.loads(answer.body), "request_id": body.request_id}))
    return _response(answer, ns)


@router.post(
    "/v1/streams/{stream_id}/labels",
    tags=["streams"],
    summary="Apply the step for an earlier prediction's inputs",
)
async def label(stream_id: str, request: Request, state: State) -> Response:
    """Logged with the kept inputs, so the owner (and a replay) applies the step single-node applies."""
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    try:
        fmt = body_format(request.headers.get("content-type"))
        raw = await read_body(request, state.settings.max_body_bytes)
        body: LabelIn = decode_body(raw, fmt, LabelIn)
    except ServiceError as exc:
        exc.stream = exc.stream or internal
        raise
    x = await state.pending.inputs(internal, body.request_id)
    logged = orjson.dumps({"request_id": body.request_id, "x": x, "y": body.y})
    answer = await state.front.write("label", internal, logged, ns)
    if answer.status in (200, 202):
        await state.pending.done(internal, body.request_id)
    return _response(answer, ns)


@router.put("/v1/templates/{name}", tags=["streams"], summary="Create or replace a template")
async def put_template(name: str, request: Request, state: State) -> JSONResponse:
    """Kept in the cluster's templates bucket (service/cluster/templates.py), used by every replica."""
    ns = _namespace(request)
    internal = ns.inside(name, field="name")
    raw = await read_body(request, state.settings.max_body_bytes)
    try:
        given = TemplateIn.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidInput(f"{field}: {first.get('msg')}", field=field) from None
    check_stream_bytes(given.spec, state.settings.max_stream_bytes, field="spec.model")
    template = Template(internal, ns.prefix + given.prefix, given.spec, given.idle_seconds)
    outcome = await state.templates.put(template)
    body = {"outcome": outcome, "name": name, **given.model_dump(mode="json")}
    return JSONResponse(body, status_code=201 if outcome == "created" else 200)


@router.get("/v1/templates", tags=["streams"], summary="All templates")
async def list_templates(request: Request, state: State) -> dict[str, Any]:
    ns = _namespace(request)
    return {
        "templates": [
            {
                "name": ns.outside(t.name),
                "prefix": ns.outside(t.prefix),
                "idle_seconds": t.idle_seconds,
                "spec": t.spec.model_dump(mode="json"),
            }
            for t in await state.templates.templates()
            if ns.owns(t.name)
        ]
    }


@router.delete("/v1/templates/{name}", tags=["streams"], summary="Remove a template (its streams stay)")
async def delete_template(name: str, request: Request, state: State) -> Response:
    await state.templates.delete(_namespace(request).inside(name, field="name"))
    return Response(status_code=204)


@router.post(
    "/v1/observations",
    tags=["observations"],
    summary="Observe many streams: checked as a whole by their owners, then logged per partition",
)
async def observe_streams(request: Request, state: State) -> Response:
    ns = _namespace(request)
    raw = await read_body(request, state.settings.max_body_bytes)
    limit = state.settings.max_request_observations
    payload = decode_observations(raw)
    if isinstance(payload, ObservationsBody) and payload.streams is not None:
        answer = await finished(await submit_columns(state.front, payload, ns, limit, encode=None))
    else:
        items = body_items(payload) if isinstance(payload, ObservationsBody) else payload
        answer = await observe_items(state.front, items, ns, limit)
    return _response(answer, ns)
