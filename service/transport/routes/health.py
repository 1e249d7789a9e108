"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trackin.service.state import State
from trackin.service.transport.openapi import HealthOut, ReadyOut, answers

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive", response_model=None, responses=answers(HealthOut))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to take traffic: ingestion would succeed (engine up, store reachable, eager restore done)",
    response_model=None,
    responses={
        200: {"model": ReadyOut, "description": "Ready"},
        503: {"model": ReadyOut, "description": "Not ready: the checks say what is not up"},
        500: answers(ReadyOut)[500],
    },
)
async def readyz(state: State) -> JSONResponse:
    checks: dict[str, str] = {"engine": "up" if state.ready else "starting"}
    if state.durability is not None:
        checks["store"] = "up" if await state.durability.is_up() else "down"
        if state.durability.settling:  # streams refused during a store outage still take no batch
            checks["log"] = "settling"
        if not state.durability.restored:  # restore_eagerly, not finished yet (the store was down at start)
            checks["restore"] = "running"
    if state.keyring is not None and not state.keyring.loaded:  # every guarded request would get 503
        checks["keys"] = "not read"
    ok = all(v == "up" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
