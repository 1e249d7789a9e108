"""Prometheus collectors of trackin's own, on prometheus_client's public ``Collector`` API.

``BulkHistogram`` counts per-observation losses with numpy in bulk (prometheus_client has no bulk
observe); ``SnapshotCollector`` turns the fleet snapshot taken at scrape time into gauge histograms across
streams and the opt-in per-stream gauges. The bucket bounds of every distribution live here too.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
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
    "CHECKPOINT_BUCKETS",
    "EPS_NORM_BUCKETS",
    "LATENCY_BUCKETS",
    "LOSS_BUCKETS",
    "SKILL_BUCKETS",
    "BulkHistogram",
    "FleetSnapshot",
    "SnapshotCollector",
    "StreamFigures",
    "UnsetGauge",
    "to_host",
]

log = logging.getLogger(__name__)
_go_float: Callable[[float], str] = floatToGoString  # how prometheus_client writes ``le`` bounds


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
SKILL_BUCKETS = (-1.0, -0.5, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
"""Skill: above 0 a stream's model beats its naive forecast (the served mix never does much worse)."""


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
    skill: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    """[m] 1 - model loss / naive loss of the streams on the scale-free path that have stepped."""


FloatArray = npt.NDArray[np.float64]


def to_host(values: torch.Tensor | npt.ArrayLike) -> FloatArray:
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


_FEW = 16
"""Up to this many values a batch is binned in Python, one ``bisect`` each: numpy's fixed cost per call
(the finite filter, ``searchsorted``, ``bincount``, the sum: about 25 us on a slow machine) was most of what
counting one observation cost, more than the engine's step of it (docs/engine.md, "Twelfth session")."""


class BulkHistogram:
    """A label-less histogram fed a whole batch at a time: one numpy pass instead of a loop of observe()
    (a few values: a short Python loop, cheaper than numpy's per-call cost).

    Non-finite values are skipped: they are counted by ``trackin_observations_total{outcome="nonfinite"}``.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._bound_list: list[float] = self._bounds.tolist()
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # per bucket (not cumulative), last +Inf
        self._few = [0] * (len(buckets) + 1)  # the same, from the batches binned in Python
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: FloatArray) -> None:
        if values.size <= _FEW:
            bounds, few, total = self._bound_list, self._few, 0.0
            with self._lock:
                for value in values.tolist():
                    if math.isfinite(value):
                        few[bisect.bisect_left(bounds, value)] += 1  # first bound >= value: its ``le``
                        total += value
                self._sum += total
            return
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, finite, side="left"), minlength=len(self._few))
        total = float(finite.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, total = self._counts + np.asarray(self._few, dtype=np.int64), self._sum
        buckets = _bucket_pairs(self._bounds, np.cumsum(counts))
        return [HistogramMetricFamily(self._name, self._documentation, buckets, total)]


class UnsetGauge:
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
    (
        "trackin_fleet_skill",
        "skill",
        SKILL_BUCKETS,
        "Skill (1 - model loss / naive-forecast loss) across resident streams; below 0 the naive is better.",
    ),
)
_PER_STREAM = (
    ("trackin_stream_loss_ewma", "loss_ewma", "Loss EWMA of an opt-in stream."),
    ("trackin_stream_beta", "beta", "Momentum coefficient beta_t of an opt-in stream."),
    ("trackin_stream_eps_norm", "eps_norm", "Error-correction norm ||eps_t|| of an opt-in stream."),
    ("trackin_stream_grad_norm", "grad_norm", "Gradient norm at the last step of an opt-in stream."),
)


class SnapshotCollector:
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
                values = to_host(getattr(snap, field))
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
