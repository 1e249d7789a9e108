"""The cluster app's routes: the stream API of single-node mode, forwarded; health; the partition map.

Thin, as the single-node routes: read the request, hand it to the `Front`, return the owner's answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trackin.service.cluster.messages import Answer
from trackin.service.cluster.partitions import HASH_NAME
from trackin.service.cluster.state import ClusterState
from trackin.service.transport.body import read_body

__all__ = ["router"]

router = APIRouter()


async def _state(request: Request) -> ClusterState:
    state: ClusterState = request.app.state.cluster
    return state


State = Annotated[ClusterState, Depends(_state)]


def _response(answer: Answer) -> Response:
    media = "application/json" if answer.body else None
    return Response(answer.body, status_code=answer.status, headers=answer.headers, media_type=media)


@router.get("/healthz", tags=["operations"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="Connected to NATS, and every owned partition serving")
async def readyz(state: State) -> JSONResponse:
    checks = state.checks()
    ok = all(v == "up" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/cluster/partitions", tags=["cluster"], summary="Partition map for owner-aware clients")
async def partitions(state: State) -> dict[str, Any]:
    return state.leases.map.as_json(state.leases.replica, HASH_NAME)


@router.put("/v1/streams/{stream_id}", tags=["streams"], summary="Create (or replace) a stream from a spec")
async def put_stream(stream_id: str, request: Request, state: State, replace: bool = False) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return _response(await state.front.write("put", stream_id, raw, replace=replace))


@router.delete("/v1/streams/{stream_id}", tags=["streams"], summary="Remove a stream and its stored state")
async def delete_stream(stream_id: str, state: State) -> Response:
    return _response(await state.front.write("delete", stream_id, b""))


@router.post("/v1/streams/{stream_id}/observations", tags=["observations"], summary="Observe one stream")
async def observe(stream_id: str, request: Request, state: State) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return _response(await state.front.write("observe", stream_id, raw))


@router.get("/v1/streams/{stream_id}", tags=["streams"], summary="A stream's spec and figures")
async def get_stream(stream_id: str, state: State) -> Response:
    return _response(await state.front.read("describe", stream_id))


@router.post("/v1/streams/{stream_id}/predict", tags=["streams"], summary="Predict without learning")
async def predict(stream_id: str, request: Request, state: State) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return _response(await state.front.read("predict", stream_id, raw))
