"""``create_cluster_app(settings)``: one replica of a cluster, built in the lifespan like the single node.

The engine, scheduler and registry are the single-node service's; what differs is around them: writes go
through the JetStream log (`Front`), partitions are leased (`Leases`) and applied by their owner
(`Owner`), checkpoints are fenced by the lease (`LeaseFencedStore`, Redis). The security parts are the
single-node ones: the same `Guard` in front of every route, the keyring read from the shared Redis (so a key
made with ``trackin keys create`` against it works on every replica within a refresh), the same refusal to
serve another address than loopback without keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException

from trackin.models.engine import Engine, resolve_device
from trackin.models.fused_warmup import warm_up
from trackin.service.cluster.book import LeaseBook
from trackin.service.cluster.front import PUBLISH_SECONDS, Front
from trackin.service.cluster.jetstream import NATS_ERRORS, Link, connect
from trackin.service.cluster.labels import PendingInputs
from trackin.service.cluster.leases import Leases
from trackin.service.cluster.messages import Replies
from trackin.service.cluster.metrics import ClusterCollector, ClusterFigures
from trackin.service.cluster.owner import Owner, OwnerParts
from trackin.service.cluster.partitions import Names
from trackin.service.cluster.persistence import Applying, ClusterPersistence
from trackin.service.cluster.quotas import SharedQuotas
from trackin.service.cluster.routes import router
from trackin.service.cluster.state import ClusterState
from trackin.service.cluster.store import LeaseFencedStore
from trackin.service.cluster.sweep import IdleScan
from trackin.service.cluster.templates import TemplateBook
from trackin.service.cluster.ws import router as ws_router
from trackin.service.domain.budget import resolve_budget
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.labels import PendingLabels
from trackin.service.domain.registry import Registry
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability import (
    Checkpointer,
    Connection,
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
from trackin.service.security.guard import Guard
from trackin.service.security.keyring import Keyring
from trackin.service.security.limiter import Limiter
from trackin.service.security.namespace import PRINCIPAL
from trackin.service.security.setup import make_keyring, make_limiter, refuse_open
from trackin.service.settings import Settings
from trackin.service.threads import configure_threads
from trackin.service.transport.metrics_port import serve_metrics

__all__ = ["build_cluster", "create_cluster_app"]

log = logging.getLogger("trackin.cluster")


def replica_id(settings: Settings) -> str:
    """The configured id, else host name and process id (subject-safe)."""
    if settings.cluster_replica_id:
        return settings.cluster_replica_id
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}"


async def _connect(settings: Settings, names: Names) -> Link:
    """Connect to NATS, waiting for it at start (the replica is not ready meanwhile)."""
    assert settings.cluster_nats_url is not None
    while True:
        try:
            return await connect(
                settings.cluster_nats_url,
                names,
                ttl=settings.cluster_lease_ttl_seconds,
                partitions=settings.cluster_partitions,
                label_ttl=settings.pending_label_ttl_seconds,
                label_bytes=settings.max_pending_label_bytes,
            )
        except NATS_ERRORS as exc:
            log.warning("NATS unavailable at start (%s); retrying", exc)
            await asyncio.sleep(1.0)


async def build_cluster(settings: Settings, limiter: Limiter | None = None) -> tuple[ClusterState, Scheduler]:
    """Every long-lived object of a replica, each made with its collaborators, in dependency order;
    ``limiter``: the request and observation rates (shared through the cluster's Redis)."""
    if not settings.redis_url:
        raise ValueError("cluster mode needs TRACKIN_REDIS_URL (checkpoints are shared through Redis)")
    names = Names()
    replica = replica_id(settings)
    partitions = settings.cluster_partitions
    metrics = Metrics(CollectorRegistry(), max_stream_series=settings.metrics_max_stream_series)
    engine = Engine(
        resolve_device(settings.device),
        kernels=settings.kernels,
        memory_budget=resolve_budget(settings.memory_budget),
    )
    catalog = Catalog()
    # Kept in the cluster's labels bucket by the front (service/cluster/labels.py), not in an owner's memory.
    labels = PendingLabels(settings.pending_label_ttl_seconds, 0, 0)
    book = LeaseBook(settings.cluster_lease_ttl_seconds)
    inner = configured_store(settings.model_copy(update={"store": "redis"}))
    assert inner is not None
    store = LeaseFencedStore(inner, book, partitions)
    health = StoreHealth(metrics)
    connection = Connection(store, health, catalog)
    ledger = Ledger(settings.checkpoint_every_steps, by_recency=False)  # nothing is evicted by recency
    scheduler = Scheduler(engine, max_batch=settings.max_batch_observations, after_apply=[ledger.applied])
    checkpointer = Checkpointer(store, connection, ledger, scheduler, catalog, health, metrics)
    journal = DurabilityLog(store, connection, ledger, health)  # unused (no store log); residency wants it
    residency = Residency(None, engine, scheduler, catalog, ledger, journal, checkpointer, metrics)
    restorer = Restorer(
        store, connection, ledger, engine, scheduler, catalog, residency, health, metrics,
        replay_log=False, limit=None,
    )  # fmt: skip
    applying = Applying()
    quotas = None
    if settings.tenant_max_streams is not None or settings.tenant_max_bytes is not None:
        quotas = SharedQuotas(
            settings.redis_url, settings.tenant_max_streams, settings.tenant_max_bytes,
            timeout=settings.store_timeout_seconds,
        )  # fmt: skip
    persistence = ClusterPersistence(
        store, connection, ledger, checkpointer, health, applying, catalog, quotas
    )
    registry = Registry(scheduler, labels, catalog, persistence, max_stream_bytes=settings.max_stream_bytes)
    link = await _connect(settings, names)
    templates = TemplateBook(link.templates)
    pending = PendingInputs(link.labels, link.js, names.labels_bucket)
    replies = Replies()
    # A front looks a write it resent up in the log for up to the forward timeout: keep it that long.
    floor = settings.cluster_forward_timeout_seconds + PUBLISH_SECONDS + 1
    retention = max(settings.cluster_log_retention_seconds, floor)
    parts = OwnerParts(
        link, names, book, replica, partitions, replies, applying, registry, scheduler, catalog, ledger,
        checkpointer, restorer, store, health, settings.max_request_observations,
        settings.checkpoint_every_steps, settings.checkpoint_interval_seconds, quotas=quotas,
        retention_seconds=retention, sweep_every_seconds=settings.template_sweep_seconds,
        idle=IdleScan(catalog, templates.template, partitions, settings.template_sweep_seconds),
        pending=pending,
    )  # fmt: skip
    owner = Owner(parts)
    url = settings.cluster_advertise_url or f"http://{settings.host}:{settings.port}"
    leases = Leases(link, book, owner, names, replica, url, partitions)
    front = Front(
        link, names, replica, partitions, leases.map, replies, settings.cluster_forward_timeout_seconds,
        templates, limiter, quotas,
    )  # fmt: skip
    figures = ClusterFigures(
        owned=lambda: len(book.held()),
        live=lambda: sum(w.live for w in owner.workers.values()),
        without_owner=lambda: sum(o is None for o in leases.map.owners),
        lease_changes=lambda: leases.changes,
        replay_lag=owner.replay_lag,
        dead_letters=lambda: parts.tally.dead_letters,
        log_trims=lambda: parts.tally.trims,
        swept=lambda: parts.tally.swept,
    )
    metrics.registry.register(ClusterCollector(figures))
    state = ClusterState(
        settings,
        metrics,
        link,
        leases,
        owner,
        front,
        templates,
        pending,
        quotas,
    )
    return state, scheduler


def _warm_up(engine: Engine, state: ClusterState) -> None:
    try:
        warm_up(engine.device, engine.kernels)
    except Exception:
        log.exception("fused kernels failed to compile")
    freeze_long_lived()  # the compiled kernels' objects, out of every later collection
    state.warmed = True


async def _start_keyring(settings: Settings) -> Keyring:
    """The keys in the cluster's Redis, read before anything else starts: a replica that would serve
    another address than loopback without keys refuses to start, as a single node does."""
    keyring = make_keyring(settings.model_copy(update={"store": "redis"}))
    await keyring.start()
    try:
        refuse_open(settings, keyring)
    except RuntimeError:
        await keyring.stop()
        raise
    return keyring


def create_cluster_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(settings)
        configure_collections(settings.gc_young_threshold)
        keyring = await _start_keyring(settings)
        # The rates are counted in the cluster's Redis, so every replica draws on the same budget.
        limiter = make_limiter(settings.model_copy(update={"store": "redis"}))
        app.state.limiter = limiter
        app.state.keyring = keyring
        try:
            state, scheduler = await build_cluster(settings, limiter)
        except BaseException:
            await keyring.stop()
            raise
        app.state.cluster = state
        gc_timer = CollectionTimer(state.metrics.gc_pauses)
        gc_timer.install()
        threading.Thread(
            target=_warm_up, args=(scheduler.engine, state), name="trackin-warm-up", daemon=True
        ).start()
        scheduler.start()
        await state.templates.start()
        await state.front.start()
        state.leases.start()
        scrape = None
        if settings.metrics_port is not None:  # /metrics without keys on a private port, as single-node
            render = functools.partial(generate_latest, state.metrics.registry)
            scrape = await serve_metrics(settings.host, settings.metrics_port, render, CONTENT_TYPE_LATEST)
        log.info("trackin replica %s started on %s:%s", state.leases.replica, settings.host, settings.port)
        try:
            yield
        finally:
            if scrape is not None:
                scrape.close()
            await state.leases.stop()
            await scheduler.drain()
            await state.front.stop()
            await state.templates.stop()
            await state.link.close()
            await scheduler.stop()
            await state.owner.close()
            if state.quotas is not None:
                await state.quotas.close()
            await keyring.stop()
            gc_timer.remove()
            log.info("trackin replica stopped")

    app = FastAPI(title="trackin (cluster replica)", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.include_router(ws_router)
    app.add_middleware(
        Guard,
        get_keyring=lambda: getattr(app.state, "keyring", None),
        get_limiter=lambda: getattr(app.state, "limiter", None),
        allowed_origins=settings.allowed_origins,
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        caller = request.scope.get(PRINCIPAL)
        if caller is not None:
            caller.namespace.public_error(exc)
        return JSONResponse(exc.body(), status_code=exc.status, headers=error_headers(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))

    return app
