"""The cluster app's routes: the stream API of single-node mode, forwarded; health; the partition map.

Thin, as the single-node routes: read the request, hand it to the `Front`, return the owner's answer.
The caller's namespace (set by the `Guard`, as in single-node mode) qualifies the URL's id before it is
hashed to a partition, so a tenant's stream maps to the same partition on every replica and no tenant can
name another's; the owner's answer is given back with the caller's own ids.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trackin.service.cluster.columns import submit_columns
from trackin.service.cluster.many import body_items, decode_body, finished, observe_items
from trackin.service.cluster.messages import Answer
from trackin.service.cluster.partitions import HASH_NAME
from trackin.service.cluster.state import ClusterState
from trackin.service.security.namespace import Namespace, principal_of
from trackin.service.transport.body import read_body
from trackin.service.transport.wire import ObservationsBody

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
    return _response(await state.front.write("put", internal, raw, ns, replace=replace), ns)


@router.delete("/v1/streams/{stream_id}", tags=["streams"], summary="Remove a stream and its stored state")
async def delete_stream(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    return _response(await state.front.write("delete", ns.inside(stream_id), b"", ns), ns)


@router.post("/v1/streams/{stream_id}/observations", tags=["observations"], summary="Observe one stream")
async def observe(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    return _response(await state.front.write("observe", internal, raw, ns), ns)


@router.get("/v1/streams/{stream_id}", tags=["streams"], summary="A stream's spec and figures")
async def get_stream(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    return _response(await state.front.read("describe", ns.inside(stream_id)), ns)


@router.post("/v1/streams/{stream_id}/predict", tags=["streams"], summary="Predict without learning")
async def predict(stream_id: str, request: Request, state: State) -> Response:
    ns = _namespace(request)
    internal = ns.inside(stream_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    return _response(await state.front.read("predict", internal, raw), ns)


@router.post(
    "/v1/observations",
    tags=["observations"],
    summary="Observe many streams: checked as a whole by their owners, then logged per partition",
)
async def observe_streams(request: Request, state: State) -> Response:
    ns = _namespace(request)
    raw = await read_body(request, state.settings.max_body_bytes)
    limit = state.settings.max_request_observations
    payload = decode_body(raw)
    if isinstance(payload, ObservationsBody) and payload.streams is not None:
        answer = await finished(await submit_columns(state.front, payload, ns, limit, encode=None))
    else:
        items = body_items(payload) if isinstance(payload, ObservationsBody) else payload
        answer = await observe_items(state.front, items, ns, limit)
    return _response(answer, ns)
