"""``create_app(settings)``: everything is built in the lifespan and torn down there; nothing at import."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackin.models.engine import Engine, Outcomes, resolve_device
from trackin.models.fused_warmup import warm_up
from trackin.service.domain.budget import resolve_budget
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.ingest import IngestBatch
from trackin.service.domain.labels import PendingLabels
from trackin.service.domain.persistence import InMemory, Persistence
from trackin.service.domain.quotas import TenantQuotas
from trackin.service.domain.registry import Registry
from trackin.service.domain.scheduler import Parts, Scheduler
from trackin.service.durability import (
    Checkpointer,
    CheckpointLoop,
    Connection,
    Durability,
    DurabilityLog,
    Ledger,
    Residency,
    Restorer,
    StoreHealth,
    configured_store,
)
from trackin.service.errors import ServiceError, error_body, error_headers
from trackin.service.garbage import CollectionTimer, configure_collections, freeze_long_lived
from trackin.service.metrics import Metrics
from trackin.service.security.guard import Gate, Guard
from trackin.service.security.namespace import PRINCIPAL
from trackin.service.security.openapi import document_security
from trackin.service.security.setup import make_keyring, make_limiter, refuse_open
from trackin.service.settings import Settings
from trackin.service.snapshot import fleet_snapshot
from trackin.service.state import AppState
from trackin.service.tasks import stop_task
from trackin.service.threads import configure_threads
from trackin.service.transport.body import BodyLimit
from trackin.service.transport.fastpath import FastObservations
from trackin.service.transport.metrics_port import serve_metrics
from trackin.service.transport.openapi import truthful_openapi
from trackin.service.transport.requestid import RequestIds, request_id
from trackin.service.transport.routes import health, observations, streams
from trackin.service.transport.routes.docs import mount_docs
from trackin.service.transport.ws import router as ws_router

__all__ = ["build", "create_app"]

log = logging.getLogger("trackin")


def _record_batch(metrics: Metrics):  # type: ignore[no-untyped-def]
    def after_apply(batches: list[IngestBatch], results: Parts, seconds: float) -> None:
        """Counts per transport, summed over the whole engine call (one numpy pass, not one per request)."""
        metrics.engine_step(len(results.merged), seconds)
        transports = {b.transport for b in batches}
        if len(transports) == 1:
            _count(metrics, batches[0].transport, results.merged)
        else:
            for batch, outcome in zip(batches, results, strict=True):
                _count(metrics, batch.transport, outcome, losses=False)
            _count(metrics, None, results.merged)

    return after_apply


_OUTCOMES: tuple[Any, ...] = ("applied", "warming", "nonfinite")


def _count(metrics: Metrics, transport: Any, outcome: Outcomes, *, losses: bool = True) -> None:
    """Outcome counters for ``transport`` (None: none) and, with ``losses``, the loss histogram."""
    if transport is not None:
        flags = (outcome.applied, outcome.warming, outcome.nonfinite)
        for name, flag in zip(_OUTCOMES, flags, strict=True):
            count = int(np.count_nonzero(flag))  # a few us each, where stacking the three cost 14
            if count:
                metrics.observed(name, transport, count)
    if losses:
        drifts = int(np.count_nonzero(outcome.drift))
        if drifts:
            metrics.drifted(drifts)
        metrics.observe_losses(outcome.losses)  # NaN (no loss scored) is skipped there


class TrackinApp(FastAPI):
    """FastAPI, with the observation endpoints and stream reads answered ahead of its stack
    (`FastObservations`)."""

    fast: FastObservations | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and (hit := fast.match(scope)) is not None:
            await fast.serve(scope, receive, send, *hit)
            return
        await super().__call__(scope, receive, send)


class _HttpMetrics:
    """Counts requests by route template, method and status (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp, get_metrics: Any) -> None:
        self.app = app
        self.get_metrics = get_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self.get_metrics()
            route = scope.get("route")
            if metrics is not None:
                path = getattr(route, "path", "unmatched")
                metrics.http_request(path, scope["method"], status, time.perf_counter() - started)


def _warm_up(engine: Engine, loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Compile the fused kernels at start-up, not on the first request: about 1 s with numba's cache,
    seconds of CPU without it (the first start after an install; docs/engine.md, "Fused kernels")."""
    started = time.perf_counter()
    try:
        spent = warm_up(engine.device, engine.kernels)
        if spent:
            log.info("fused kernels ready in %.2f s (%s)", time.perf_counter() - started, ", ".join(spent))
    except Exception:
        log.exception("fused kernels failed to compile")
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the service stopped meanwhile
            loop.call_soon_threadsafe(done.set)


def _start_warm_up(engine: Engine) -> asyncio.Event:
    """Compile in a daemon thread (a stop during a long first compile need not wait for it); the event is
    set when done."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_warm_up, args=(engine, loop, done), name="trackin-warm-up", daemon=True).start()
    return done


async def _ready_when(warmed: asyncio.Event, state: AppState) -> None:
    """Readiness waits for the kernels (a request that comes earlier waits for the compilation instead)."""
    await warmed.wait()
    freeze_long_lived()  # the kernels' compiled objects, made by the warm-up, out of every later collection
    state.ready = True


def build(settings: Settings) -> AppState:
    """Every long-lived object, each made with its collaborators (none assigned afterwards).

    Durability's parts come in dependency order: the log and the ledger first, because the scheduler
    calls them around each batch; then what needs the scheduler (checkpoints, residency, restores).
    """
    metrics = Metrics(CollectorRegistry(), max_stream_series=settings.metrics_max_stream_series)
    engine = Engine(
        resolve_device(settings.device),
        kernels=settings.kernels,
        memory_budget=resolve_budget(settings.memory_budget),
    )
    catalog = Catalog()
    labels = PendingLabels(
        settings.pending_label_ttl_seconds, settings.max_pending_labels, settings.max_pending_label_bytes
    )
    max_batch, log_mode = settings.max_batch_observations, settings.durability == "log"
    store = configured_store(settings)
    durability: Durability | None = None
    persistence: Persistence = InMemory()
    if store is None:
        scheduler = Scheduler(engine, max_batch=max_batch, after_apply=[_record_batch(metrics)])
    else:
        health = StoreHealth(metrics)
        connection = Connection(store, health, catalog)
        ledger = Ledger(settings.checkpoint_every_steps, by_recency=settings.max_resident_streams is not None)
        journal = DurabilityLog(store, connection, ledger, health, float32=settings.log_float32)
        scheduler = Scheduler(
            engine,
            max_batch=max_batch,
            before_apply=journal.append if log_mode else None,
            after_apply=[_record_batch(metrics), ledger.applied],
        )
        checkpointer = Checkpointer(store, connection, ledger, scheduler, catalog, health, metrics)
        limit = settings.max_resident_streams
        residency = Residency(limit, engine, scheduler, catalog, ledger, journal, checkpointer, metrics)
        restorer = Restorer(
            store, connection, ledger, engine, scheduler, catalog, residency, health, metrics,
            replay_log=log_mode, limit=limit, checkpointer=checkpointer,
        )  # fmt: skip
        loop = CheckpointLoop(
            settings, engine, connection, ledger, checkpointer, journal, residency, restorer, health
        )
        durability = Durability(
            store, engine, connection, health, ledger, checkpointer, residency, restorer, loop
        )
        persistence = durability
    quotas = None
    if settings.tenant_max_streams is not None or settings.tenant_max_bytes is not None:
        quotas = TenantQuotas(catalog, persistence, settings.tenant_max_streams, settings.tenant_max_bytes)
    registry = Registry(
        scheduler, labels, catalog, persistence, max_stream_bytes=settings.max_stream_bytes, quotas=quotas
    )
    metrics.set_snapshot_source(
        lambda: fleet_snapshot(
            engine,
            catalog,
            durability.known_streams() if durability is not None else None,
            settings.metrics_max_stream_series,
        )
    )
    keyring, limiter = make_keyring(settings), make_limiter(settings)
    return AppState(settings, engine, scheduler, registry, metrics, durability, keyring, limiter)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.cluster_nats_url:  # opt-in scale-out (docs/scale-out.md)
        # Imported here: the NATS client and the cluster's routes cost a single node's every start about
        # 0.7 s of CPU, and a single node never uses them.
        from trackin.service.cluster import create_cluster_app

        return create_cluster_app(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(settings)
        configure_collections(settings.gc_young_threshold)
        state = build(settings)
        keyring = state.keyring
        assert keyring is not None
        await keyring.start()
        try:
            refuse_open(settings, keyring)
        except RuntimeError:
            await keyring.stop()
            raise
        # Compiled in a thread while the rest starts: /healthz answers at once, /readyz once compiled.
        warmed = _start_warm_up(state.engine)
        state.metrics.set_pending_source(lambda: state.scheduler.pending_observations)
        app.state.trackin = state
        registry, scheduler, durability = state.registry, state.scheduler, state.durability
        scheduler.start()
        if durability is not None:
            await durability.start()
        sweeper = asyncio.create_task(_sweep_templates(registry, settings.template_sweep_seconds))
        scrape = None
        if settings.metrics_port is not None:
            render = functools.partial(generate_latest, state.metrics.registry)
            scrape = await serve_metrics(settings.host, settings.metrics_port, render, CONTENT_TYPE_LATEST)
        # Long-lived objects made at start-up (engine, modules) need no cycle scans: keeps GC pauses short.
        gc.freeze()
        gc_timer = CollectionTimer(state.metrics.gc_pauses)
        gc_timer.install()
        readiness = asyncio.create_task(_ready_when(warmed, state))
        log.info("trackin started on %s (device %s)", f"{settings.host}:{settings.port}", state.engine.device)
        try:
            yield
        finally:
            await stop_task(readiness)
            state.ready = False
            await stop_task(sweeper)
            if scrape is not None:
                scrape.close()
            await scheduler.drain()
            if durability is not None:
                await durability.stop()
            await scheduler.stop()
            await keyring.stop()
            gc_timer.remove()
            log.info("trackin stopped")

    app = TrackinApp(
        title="trackin",
        version="0.1.0",
        summary="Streaming online tracking: one small model per stream, one TrackIn step per observation.",
        lifespan=lifespan,
        docs_url=None,  # served from local files by mount_docs
        redoc_url=None,  # ReDoc has no local bundle here: one UI, served locally
    )
    app.openapi = truthful_openapi(app, extend=document_security)  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(streams.router)
    app.include_router(observations.router)
    app.include_router(ws_router)
    mount_docs(app)
    # Pure ASGI middleware only (no BaseHTTPMiddleware: it costs a task and a stream per request).
    # Innermost first: the body limit, authentication (before any body is read), the request metrics
    # (refusals are counted too), then request ids outermost. The observation endpoints and the stream
    # reads skip all of it (`FastObservations` does the same checks itself, in one pass).
    get_keyring = lambda: getattr(getattr(app.state, "trackin", None), "keyring", None)  # noqa: E731
    get_limiter = lambda: getattr(getattr(app.state, "trackin", None), "limiter", None)  # noqa: E731
    app.fast = FastObservations(lambda: getattr(app.state, "trackin", None), Gate(get_keyring, get_limiter))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(
        Guard, get_keyring=get_keyring, get_limiter=get_limiter, allowed_origins=settings.allowed_origins
    )
    app.add_middleware(
        _HttpMetrics, get_metrics=lambda: getattr(getattr(app.state, "trackin", None), "metrics", None)
    )
    app.add_middleware(RequestIds)  # outermost: every answer names its request id, any exception a 500

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        caller = request.scope.get(PRINCIPAL)
        if caller is not None:
            caller.namespace.public_error(exc)
        body = exc.body()
        if exc.status == 500:  # a corrupt checkpoint: the id its log line names
            body["error"]["request_id"] = request_id(request.scope)
        return JSONResponse(body, status_code=exc.status, headers=error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = "body" if first.get("type") == "json_invalid" else ".".join(loc) or "body"
        stream = request.path_params.get("stream_id")
        message = f"{field}: {first.get('msg')}" + (f" ({len(errors) - 1} more)" if len(errors) > 1 else "")
        return JSONResponse(error_body("invalid_input", message, field, stream), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (not JSON at all): as a bad JSON
            stream = request.path_params.get("stream_id")
            malformed = error_body("invalid_input", f"malformed body: {exc.detail}", "body", stream)
            return JSONResponse(malformed, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette's Allow names only the first route of the path: all of them
            headers["Allow"] = ", ".join(_allowed_methods(request))
        body = error_body(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    return app


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers in full (FastAPI: one route per method)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


async def _sweep_templates(registry: Registry, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await registry.sweep_idle()
        except Exception:
            log.exception("template sweep failed")
