"""Prometheus instruments for trackin, on a registry passed in (nothing is registered at import time).

Naming follows Prometheus practice: every name starts with ``trackin_``, values are in base units
(``_seconds``, ``_bytes``), counters end in ``_total`` and distributions are histograms, never summaries, so
they aggregate across instances. Labels have small fixed value sets; the only ``stream`` label is on the
opt-in per-stream series (``StreamSpec.export_metrics``), capped at ``max_stream_series`` so one client
cannot blow up the time-series database.

Three kinds of figures:

* event instruments updated on the hot path through one-line helpers (``observed``, ``engine_step``, ...);
* per-observation losses, counted with numpy in bulk (``observe_losses``): prometheus_client has no bulk
  observe, so the loss histogram is a small collector of its own (``BulkHistogram``) built on the public
  ``Collector`` / ``HistogramMetricFamily`` API rather than on ``Histogram`` internals;
* fleet state read at scrape time from a callback (``set_snapshot_source``): distributions across streams
  are gauge histograms (``trackin_fleet_*_bucket``, ``_gsum``, ``_gcount``; no ``rate()``, e.g.
  ``histogram_quantile(0.9, sum by (le) (trackin_fleet_loss_ewma_bucket))``). They are named ``fleet``
  rather than ``stream`` because ``trackin_stream_loss_ewma`` etc. are the per-stream gauges; one name
  cannot be both a histogram family and a gauge family in one exposition.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, Literal

import numpy.typing as npt
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from trackin.service.collectors import (
    BATCH_SIZE_BUCKETS,
    BETA_BUCKETS,
    CHECKPOINT_BUCKETS,
    EPS_NORM_BUCKETS,
    LATENCY_BUCKETS,
    LOSS_BUCKETS,
    BulkHistogram,
    FleetSnapshot,
    SnapshotCollector,
    StreamFigures,
    UnsetGauge,
    to_host,
)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BETA_BUCKETS",
    "CHECKPOINT_OUTCOMES",
    "EPS_NORM_BUCKETS",
    "LATENCY_BUCKETS",
    "LOSS_BUCKETS",
    "OUTCOMES",
    "TRANSPORTS",
    "CheckpointOutcome",
    "FleetSnapshot",
    "Metrics",
    "Outcome",
    "StreamFigures",
    "Transport",
]

log = logging.getLogger(__name__)

Outcome = Literal["applied", "warming", "rejected", "nonfinite"]
Transport = Literal["rest", "ws", "replay", "log"]
CheckpointOutcome = Literal["accepted", "rejected_stale", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("applied", "warming", "rejected", "nonfinite")
TRANSPORTS: tuple[Transport, ...] = ("rest", "ws", "replay", "log")
CHECKPOINT_OUTCOMES: tuple[CheckpointOutcome, ...] = ("accepted", "rejected_stale", "failed")


class Metrics:
    """trackin's instruments on ``registry``; the helpers keep each call site to one line.

    Labelled series with fixed value sets are created up front, so a rate over an outcome that has not
    happened yet is 0 rather than missing (alerts and dashboards can rely on the series existing).

    Args:
        registry: where everything is registered (a fresh ``CollectorRegistry`` per app or test).
        max_stream_series: cap on opt-in streams exported with a ``stream`` label per scrape.
        process_metrics: also export ``trackin_process_*`` (CPU, resident memory, fds; Linux only).

    Example:
        >>> metrics = Metrics(CollectorRegistry())
        >>> metrics.observed("applied", "rest", 3)
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_stream_series: int = 100,
        process_metrics: bool = True,
    ) -> None:
        if max_stream_series < 0:
            raise ValueError(f"Invalid max_stream_series: {max_stream_series}")
        self.registry = registry
        r = registry
        # Registered first so a failure counted during this scrape's snapshot is exported in the same scrape.
        self._snapshot = SnapshotCollector(max_stream_series, lambda: self.snapshot_errors.inc())
        r.register(self._snapshot)
        self.snapshot_errors = Counter(
            "trackin_snapshot_errors", "Scrapes whose snapshot source raised.", registry=r
        )
        self.build_info = Gauge("trackin_build_info", "Always 1; the version.", ["version"], registry=r)
        self.build_info.labels(_version()).set(1)

        self.observations = Counter(
            "trackin_observations",
            "Observations answered, by outcome and transport.",
            ["outcome", "transport"],
            registry=r,
        )
        self.ingest_latency = Histogram(
            "trackin_ingest_latency_seconds",
            "Arrival of a request or message to its answer.",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # the labelled children of the per-message series, looked up once (``labels`` costs a lock and a
        # tuple per call: several microseconds a WebSocket frame)
        self._latency_of = {transport: self.ingest_latency.labels(transport) for transport in TRANSPORTS}
        self._observed: dict[tuple[str, str], Any] = {}
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        for transport in TRANSPORTS:
            for outcome in OUTCOMES:
                self.observations.labels(outcome, transport)

        self.http_requests = Counter(
            "trackin_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "trackin_http_request_duration_seconds",
            "HTTP request handling time by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.websocket_open = Gauge(
            "trackin_websocket_connections_open", "WebSocket connections open now.", registry=r
        )
        self.websocket_connections = Counter(
            "trackin_websocket_connections", "WebSocket connections accepted.", registry=r
        )
        self.websocket_messages = Counter(
            "trackin_websocket_messages", "WebSocket messages by outcome.", ["outcome"], registry=r
        )
        self._ws_ok = self.websocket_messages.labels("ok")
        self._ws_error = self.websocket_messages.labels("error")

        self.engine_batch_size = Histogram(
            "trackin_engine_batch_size",
            "Observations per engine batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.engine_pending = Gauge(
            "trackin_engine_pending_observations",
            "Observations accepted and not yet applied (queued for the engine, or in it): the backlog.",
            registry=r,
        )
        self.engine_step_duration = Histogram(
            "trackin_engine_step_duration_seconds",
            "Time of one batched engine step (predict, loss, backward, update).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.observation_loss = BulkHistogram(
            "trackin_observation_loss", "Loss of each observation before its step.", LOSS_BUCKETS
        )
        r.register(self.observation_loss)
        self.drifts = Counter("trackin_drifts", "Drifts detected (Page-Hinkley alarms).", registry=r)

        self.checkpoint_writes = Counter(
            "trackin_checkpoint_writes",
            "Stream checkpoints written, by outcome (rejected_stale: a newer one was stored).",
            ["outcome"],
            registry=r,
        )
        for checkpoint_outcome in CHECKPOINT_OUTCOMES:
            self.checkpoint_writes.labels(checkpoint_outcome)
        self.checkpoint_duration = Histogram(
            "trackin_checkpoint_duration_seconds",
            "Time of one checkpoint pass.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "trackin_checkpoint_failures", "Checkpoint passes that failed as a whole.", registry=r
        )
        self.log_entries = Gauge(
            "trackin_log_entries", "Observation-log entries not yet covered by a checkpoint.", registry=r
        )
        # No series until a store reports: the memory-only mode has no store to be down, and an unwired
        # store shows up as missing data rather than as a false "down".
        self.store_up = UnsetGauge("trackin_store_up", "1 if the store answered its last call.")
        r.register(self.store_up)
        self.restore_duration = Histogram(
            "trackin_stream_restore_duration_seconds",
            "Time to load an evicted or not-yet-loaded stream from the store.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.evictions = Counter("trackin_evictions", "Streams evicted from memory.", registry=r)
        self.gc_pauses = Histogram(
            "trackin_gc_pause_seconds",
            "Cyclic garbage collections by generation: the event loop and the engine thread wait for each.",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for generation in "012":
            self.gc_pauses.labels(generation)
        self.gc_frozen = Gauge(
            "trackin_gc_frozen_objects",
            "Objects kept out of garbage collection (alive at readiness: start-up's long-lived objects).",
            registry=r,
        )
        self.gc_frozen.set_function(gc.get_freeze_count)
        if process_metrics:
            ProcessCollector(namespace="trackin", registry=r)

    def set_pending_source(self, fn: Callable[[], int]) -> None:
        """Read the engine's backlog from ``fn`` at each scrape."""
        self.engine_pending.set_function(fn)

    def set_snapshot_source(self, fn: Callable[[], FleetSnapshot]) -> None:
        """Call ``fn`` at each scrape, from the thread serving /metrics; it must be safe to call there."""
        self._snapshot.source = fn

    def observed(self, outcome: Outcome, transport: Transport, n: int = 1) -> None:
        """Count ``n`` answered observations (after the engine decided their outcome)."""
        key = (outcome, transport)
        child = self._observed.get(key)
        if child is None:  # a handful of label pairs: looked up once (labels() costs microseconds a call)
            child = self._observed[key] = self.observations.labels(outcome, transport)
        child.inc(n)

    def observe_losses(self, losses: torch.Tensor | npt.ArrayLike) -> None:
        """Feed one batch of per-observation losses (any shape or device) to the loss histogram."""
        self.observation_loss.observe_many(to_host(losses))

    def ingested(self, transport: Transport, seconds: float) -> None:
        """One request or message answered ``seconds`` after it arrived."""
        self._latency_of[transport].observe(seconds)

    def engine_step(self, batch_size: int, seconds: float) -> None:
        """One engine batch of ``batch_size`` observations took ``seconds``."""
        self.engine_batch_size.observe(batch_size)
        self.engine_step_duration.observe(seconds)

    def drifted(self, n: int = 1) -> None:
        """``n`` streams raised a drift alarm."""
        self.drifts.inc(n)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request; ``route`` is the route template (``/v1/streams/{stream_id}``), never the path."""
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:  # routes are templates and statuses few: a bounded cache of the children
            labelled = self.http_requests.labels(route, method, str(status))
            children = self._http[key] = (labelled, self.http_request_duration.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def websocket_opened(self) -> None:
        self.websocket_connections.inc()
        self.websocket_open.inc()

    def websocket_closed(self) -> None:
        self.websocket_open.dec()

    def websocket_message(self, ok: bool) -> None:
        (self._ws_ok if ok else self._ws_error).inc()

    def checkpoint_written(self, outcome: CheckpointOutcome, n: int = 1) -> None:
        """``n`` stream checkpoints reached the store with ``outcome``."""
        self.checkpoint_writes.labels(outcome).inc(n)

    def checkpoint_pass(self, seconds: float, *, ok: bool) -> None:
        """A checkpoint pass ended after ``seconds``; ``ok=False`` if it failed as a whole."""
        self.checkpoint_duration.observe(seconds)
        if not ok:
            self.checkpoint_failures.inc()

    def set_store(self, *, up: bool, log_entries: int | None = None) -> None:
        """Store health after a store call; ``log_entries``: log entries not covered by a checkpoint."""
        self.store_up.set(1.0 if up else 0.0)
        if log_entries is not None:
            self.log_entries.set(log_entries)

    def restored(self, seconds: float) -> None:
        """A stream was loaded from the store in ``seconds``."""
        self.restore_duration.observe(seconds)

    def evicted(self, n: int = 1) -> None:
        self.evictions.inc(n)


def _version() -> str:
    try:
        return metadata.version("trackin")
    except metadata.PackageNotFoundError:
        return "unknown"
