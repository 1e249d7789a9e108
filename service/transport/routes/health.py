"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trackin.service.state import State

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to take traffic (engine up, store reachable, eager restore done)")
async def readyz(state: State) -> JSONResponse:
    checks: dict[str, str] = {"engine": "up" if state.ready else "starting"}
    if state.durability is not None:
        checks["store"] = "up" if await state.durability.is_up() else "down"
        if not state.durability.restored:  # restore_eagerly, not finished yet (the store was down at start)
            checks["restore"] = "running"
    if state.keyring is not None and not state.keyring.loaded:  # every guarded request would get 503
        checks["keys"] = "not read"
    ok = all(v == "up" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
