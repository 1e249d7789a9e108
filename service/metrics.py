"""Prometheus instruments for trackin, on a registry passed in (nothing is registered at import time).

Naming follows Prometheus practice: every name starts with ``trackin_``, values are in base units
(``_seconds``, ``_bytes``), counters end in ``_total`` and distributions are histograms, never summaries, so
they aggregate across instances. Labels have small fixed value sets; the only ``stream`` label is on the
opt-in per-stream series (``StreamSpec.export_metrics``), capped at ``max_stream_series`` so one client
cannot blow up the time-series database.

Three kinds of figures:

* event instruments updated on the hot path through one-line helpers (``observed``, ``engine_step``, ...);
* per-observation losses, counted with numpy in bulk (``observe_losses``): prometheus_client has no bulk
  observe, so the loss histogram is a small collector of its own (``_BulkHistogram``) built on the public
  ``Collector`` / ``HistogramMetricFamily`` API rather than on ``Histogram`` internals;
* fleet state read at scrape time from a callback (``set_snapshot_source``): distributions across streams
  are gauge histograms (``trackin_fleet_*_bucket``, ``_gsum``, ``_gcount``; no ``rate()``, e.g.
  ``histogram_quantile(0.9, sum by (le) (trackin_fleet_loss_ewma_bucket))``). They are named ``fleet``
  rather than ``stream`` because ``trackin_stream_loss_ewma`` etc. are the per-stream gauges; one name
  cannot be both a histogram family and a gauge family in one exposition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

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
_go_float: Callable[[float], str] = floatToGoString  # how prometheus_client writes ``le`` bounds

Outcome = Literal["applied", "warming", "rejected", "nonfinite"]
Transport = Literal["rest", "ws", "replay", "log"]
CheckpointOutcome = Literal["accepted", "rejected_stale", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("applied", "warming", "rejected", "nonfinite")
TRANSPORTS: tuple[Transport, ...] = ("rest", "ws", "replay", "log")
CHECKPOINT_OUTCOMES: tuple[CheckpointOutcome, ...] = ("accepted", "rejected_stale", "failed")


def _one_two_five(lo_exp: int, hi_exp: int) -> tuple[float, ...]:
    """1-2-5 steps from 10**lo_exp to 10**hi_exp: log-spaced, with bounds that read well as ``le`` labels."""
    steps = [float(f"{m}e{e}") for e in range(lo_exp, hi_exp) for m in (1, 2, 5)]
    return (*steps, float(f"1e{hi_exp}"))


# Losses of streams on different scales differ by orders of magnitude; 1e-6..1e4 covers MSE on normalised
# targets up to raw prices. The fleet loss EWMA uses the same bounds so the two quantiles compare.
LOSS_BUCKETS = _one_two_five(-6, 4)
LATENCY_BUCKETS = _one_two_five(-4, 1)  # 100 µs .. 10 s
CHECKPOINT_BUCKETS = _one_two_five(-3, 2)  # 1 ms .. 100 s: a pass writes many streams
BATCH_SIZE_BUCKETS = tuple(float(2**k) for k in range(14))  # 1 .. 8192 observations
# beta_t = beta * s_t with s_t in [0, 1] and beta = 1 by default: linear in [0, 1], coarse above; le=0
# counts streams whose momentum term is off (cos <= 0).
BETA_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0)
EPS_NORM_BUCKETS = (0.0, *_one_two_five(-8, 2))  # le=0: error correction off (eta = 0)


@dataclass(frozen=True)
class StreamFigures:
    """One opt-in stream's figures at scrape time."""

    stream: str
    steps: int
    loss_ewma: float
    beta: float
    eps_norm: float
    grad_norm: float


@dataclass(frozen=True)
class FleetSnapshot:
    """What the service reports at each scrape; built by the callback given to ``set_snapshot_source``.

    The three tensors hold one value per resident stream that has stepped (shape ``[n]``, any device and
    float dtype; they are moved to the host here).
    """

    loss_ewma: torch.Tensor  # [n]
    beta: torch.Tensor  # [n]
    eps_norm: torch.Tensor  # [n]
    resident_streams: int
    total_streams: int
    state_bytes: int
    device_memory_bytes: dict[str, int]  # at least the device holding state, e.g. {"cpu": state bytes}
    per_stream: list[StreamFigures]  # only opt-in streams; Metrics exports at most max_stream_series


FloatArray = npt.NDArray[np.float64]


def _host(values: torch.Tensor | npt.ArrayLike) -> FloatArray:
    """A flat float64 numpy copy of ``values`` (a tensor on any device, an array or a sequence)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _cumulative_counts(bounds: FloatArray, values: FloatArray) -> npt.NDArray[np.int64]:
    """Cumulative ``le`` counts of ``values``: one per bound, then +Inf (NaN falls in +Inf only)."""
    index = np.searchsorted(bounds, values, side="left")  # first bound >= value, len(bounds) if none
    return np.cumsum(np.bincount(index, minlength=len(bounds) + 1)).astype(np.int64)


def _bucket_pairs(bounds: FloatArray, cumulative: npt.NDArray[np.int64]) -> list[tuple[str, float]]:
    labels = [_go_float(b) for b in bounds.tolist()] + ["+Inf"]
    return [(le, float(c)) for le, c in zip(labels, cumulative.tolist(), strict=True)]


class _BulkHistogram:
    """A label-less histogram fed a whole batch at a time: one numpy pass instead of a loop of observe().

    Non-finite values are skipped: they are counted by ``trackin_observations_total{outcome="nonfinite"}``.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # cumulative, last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: FloatArray) -> None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return
        counts = _cumulative_counts(self._bounds, finite)
        total = float(finite.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        buckets = _bucket_pairs(self._bounds, counts)
        return [HistogramMetricFamily(self._name, self._documentation, buckets, total)]


class _UnsetGauge:
    """A label-less gauge with no sample until its first ``set`` (prometheus_client's Gauge starts at 0)."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._value: float | None = None

    def set(self, value: float) -> None:
        self._value = value  # one reference assignment: atomic under the GIL

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        return [_gauge(self._name, self._documentation, self._value)]


_FLEET = (
    ("trackin_fleet_loss_ewma", "loss_ewma", LOSS_BUCKETS, "Loss EWMA across resident streams."),
    ("trackin_fleet_beta", "beta", BETA_BUCKETS, "Momentum coefficient beta_t across resident streams."),
    ("trackin_fleet_eps_norm", "eps_norm", EPS_NORM_BUCKETS, "||eps_t|| across resident streams."),
)
_PER_STREAM = (
    ("trackin_stream_loss_ewma", "loss_ewma", "Loss EWMA of an opt-in stream."),
    ("trackin_stream_beta", "beta", "Momentum coefficient beta_t of an opt-in stream."),
    ("trackin_stream_eps_norm", "eps_norm", "Error-correction norm ||eps_t|| of an opt-in stream."),
    ("trackin_stream_grad_norm", "grad_norm", "Gradient norm at the last step of an opt-in stream."),
)


class _SnapshotCollector:
    """Calls the snapshot source once per scrape and turns the snapshot into metric families.

    A failing source must not fail the scrape (the event metrics would be lost with it): the error is
    logged and counted, and the snapshot families are left out of that scrape.
    """

    def __init__(self, max_stream_series: int, on_error: Callable[[], None]) -> None:
        self.source: Callable[[], FleetSnapshot] | None = None
        self._max = max_stream_series
        self._on_error = on_error

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None, 0.0))

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return []
        start = time.perf_counter()
        try:
            snapshot = source()
        except Exception:
            log.exception("metrics snapshot source failed")
            self._on_error()
            return []
        return list(self._families(snapshot, time.perf_counter() - start))

    def _families(self, snap: FleetSnapshot | None, seconds: float) -> Iterator[Metric]:
        for name, field, buckets, doc in _FLEET:
            histogram = GaugeHistogramMetricFamily(name, doc)
            if snap is not None:
                values = _host(getattr(snap, field))
                bounds = np.asarray(buckets, dtype=np.float64)
                total = float(values[np.isfinite(values)].sum())  # non-finite: +Inf bucket, not sum
                buckets_now = _bucket_pairs(bounds, _cumulative_counts(bounds, values))
                histogram.add_metric([], buckets_now, total)
            yield histogram
        yield from self._gauges(snap, seconds)
        exported = sorted(snap.per_stream, key=lambda f: f.stream) if snap is not None else []
        dropped = max(len(exported) - self._max, 0)
        exported = exported[: self._max]  # by name, so the exported set is stable across scrapes
        steps = CounterMetricFamily(
            "trackin_stream_steps", "Optimizer steps of an opt-in stream.", labels=["stream"]
        )
        for figures in exported:
            steps.add_metric([figures.stream], figures.steps)
        yield steps
        for name, field, doc in _PER_STREAM:
            family = GaugeMetricFamily(name, doc, labels=["stream"])
            for figures in exported:
                family.add_metric([figures.stream], getattr(figures, field))
            yield family
        yield _gauge(
            "trackin_stream_series_dropped",
            "Opt-in streams not exported because max_stream_series was reached.",
            None if snap is None else dropped,
        )

    @staticmethod
    def _gauges(snap: FleetSnapshot | None, seconds: float) -> Iterator[Metric]:
        def value(get: Callable[[FleetSnapshot], float]) -> float | None:
            return None if snap is None else get(snap)

        yield _gauge("trackin_streams_resident", "Streams in memory.", value(lambda s: s.resident_streams))
        yield _gauge(
            "trackin_streams", "Known streams, resident or stored.", value(lambda s: s.total_streams)
        )
        yield _gauge("trackin_state_bytes", "Bytes of resident stream state.", value(lambda s: s.state_bytes))
        yield _gauge(
            "trackin_snapshot_duration_seconds", "Time the snapshot source took.", value(lambda _: seconds)
        )
        memory = GaugeMetricFamily(
            "trackin_device_memory_bytes", "Memory allocated per device.", labels=["device"]
        )
        for device, size in sorted((snap.device_memory_bytes if snap else {}).items()):
            memory.add_metric([device], size)
        yield memory


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A label-less gauge family; empty when there is no value yet (describe() has no snapshot)."""
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


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
        self._snapshot = _SnapshotCollector(max_stream_series, lambda: self.snapshot_errors.inc())
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
        for transport in TRANSPORTS:
            self.ingest_latency.labels(transport)
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
        for ok in ("ok", "error"):
            self.websocket_messages.labels(ok)

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
        self.observation_loss = _BulkHistogram(
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
        self.store_up = _UnsetGauge("trackin_store_up", "1 if the store answered its last call.")
        r.register(self.store_up)
        self.restore_duration = Histogram(
            "trackin_stream_restore_duration_seconds",
            "Time to load an evicted or not-yet-loaded stream from the store.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.evictions = Counter("trackin_evictions", "Streams evicted from memory.", registry=r)
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
        self.observations.labels(outcome, transport).inc(n)

    def observe_losses(self, losses: torch.Tensor | npt.ArrayLike) -> None:
        """Feed one batch of per-observation losses (any shape or device) to the loss histogram."""
        self.observation_loss.observe_many(_host(losses))

    def ingested(self, transport: Transport, seconds: float) -> None:
        """One request or message answered ``seconds`` after it arrived."""
        self.ingest_latency.labels(transport).observe(seconds)

    def engine_step(self, batch_size: int, seconds: float) -> None:
        """One engine batch of ``batch_size`` observations took ``seconds``."""
        self.engine_batch_size.observe(batch_size)
        self.engine_step_duration.observe(seconds)

    def drifted(self, n: int = 1) -> None:
        """``n`` streams raised a drift alarm."""
        self.drifts.inc(n)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request; ``route`` is the route template (``/v1/streams/{stream_id}``), never the path."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_request_duration.labels(route, method).observe(seconds)

    def websocket_opened(self) -> None:
        self.websocket_connections.inc()
        self.websocket_open.inc()

    def websocket_closed(self) -> None:
        self.websocket_open.dec()

    def websocket_message(self, ok: bool) -> None:
        self.websocket_messages.labels("ok" if ok else "error").inc()

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
