"""service/metrics.py: Prometheus naming rules, the opt-in cap, and bucket counts checked by plain loops."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries
from prometheus_client.samples import Sample

from trackin.service.metrics import (
    BETA_BUCKETS,
    CHECKPOINT_OUTCOMES,
    EPS_NORM_BUCKETS,
    LOSS_BUCKETS,
    OUTCOMES,
    TRANSPORTS,
    FleetSnapshot,
    Metrics,
    StreamFigures,
)

NAME = re.compile(r"^trackin_[a-z][a-z0-9_]*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
PER_STREAM = {
    "trackin_stream_loss_ewma",
    "trackin_stream_steps_total",
    "trackin_stream_beta",
    "trackin_stream_eps_norm",
    "trackin_stream_grad_norm",
}
NON_BASE_UNITS = ("_milliseconds", "_ms", "_microseconds", "_minutes", "_hours", "_kb", "_mb", "_gb")
INF = math.inf


def figures(name: str, steps: int = 1) -> StreamFigures:
    return StreamFigures(name, steps, loss_ewma=0.5, beta=0.25, eps_norm=0.0, grad_norm=2.0)


def snapshot(
    loss: Sequence[float] = (0.1,),
    beta: Sequence[float] = (0.5,),
    eps: Sequence[float] = (0.0,),
    per_stream: Sequence[StreamFigures] = (),
) -> FleetSnapshot:
    return FleetSnapshot(
        loss_ewma=torch.tensor(loss, dtype=torch.float64),
        beta=torch.tensor(beta, dtype=torch.float32),
        eps_norm=torch.tensor(eps, dtype=torch.float64),
        resident_streams=len(loss),
        total_streams=len(loss) + 7,
        state_bytes=4096,
        device_memory_bytes={"cpu": 1 << 20},
        per_stream=list(per_stream),
    )


def exercised(snap: FleetSnapshot, max_stream_series: int = 100) -> tuple[Metrics, CollectorRegistry]:
    """Metrics with every instrument touched once, so every series exists."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_stream_series=max_stream_series)
    metrics.set_snapshot_source(lambda: snap)
    metrics.observed("applied", "rest", 3)
    metrics.observe_losses(torch.tensor([0.1, 2.0]))
    metrics.ingested("ws", 0.003)
    metrics.engine_step(16, 0.002)
    metrics.drifted()
    metrics.http_request("/v1/streams/{stream_id}", "PUT", 201, 0.01)
    metrics.websocket_opened()
    metrics.websocket_message(ok=False)
    metrics.websocket_closed()
    metrics.checkpoint_written("accepted", 5)
    metrics.checkpoint_pass(0.2, ok=False)
    metrics.set_store(up=True, log_entries=12)
    metrics.restored(0.05)
    metrics.evicted(2)
    return metrics, registry


def samples(registry: CollectorRegistry) -> list[tuple[str, str, Sample]]:
    """(family name, family type, sample) for the text exposition Prometheus scrapes."""
    text = generate_latest(registry).decode()
    return [(f.name, f.type, s) for f in text_string_to_metric_families(text) for s in f.samples]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = [s.value for _, _, s in samples(registry) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def loop_cumulative(bounds: Sequence[float], values: Sequence[float]) -> list[float]:
    """The ``le`` definition, one comparison at a time; NaN and +inf only in +Inf."""
    return [float(sum(1 for v in values if v <= b)) for b in bounds] + [float(len(values))]


def buckets(registry: CollectorRegistry, name: str) -> list[float]:
    found = [s for _, _, s in samples(registry) if s.name == f"{name}_bucket"]
    les = [float(s.labels["le"]) for s in found]
    assert les == sorted(les)
    assert les[-1] == INF
    return [s.value for s in found]


# --- naming -----------------------------------------------------------------------------------------


def test_every_name_and_label_follows_prometheus_rules() -> None:
    _, registry = exercised(snapshot(per_stream=[figures("a")]))
    found = samples(registry)
    assert found
    for family, kind, sample in found:
        assert NAME.match(sample.name), sample.name
        assert kind != "summary", family
        for label in sample.labels:
            assert LABEL.match(label), (sample.name, label)
        if "stream" in sample.labels:
            assert sample.name in PER_STREAM, sample.name
        if "le" in sample.labels:
            assert kind == "histogram", sample.name
            assert sample.name.endswith("_bucket"), sample.name
        if kind == "counter":
            assert sample.name.endswith(("_total", "_created")), sample.name
        elif sample.name.endswith("_total"):
            pytest.fail(f"{sample.name} ends in _total but is a {kind}")
        if any(word in family for word in ("duration", "latency", "_time")):
            assert "_seconds" in family, family
        if "memory" in family or "bytes" in family:
            assert family.endswith("_bytes"), family
        assert not any(unit in family for unit in NON_BASE_UNITS), family


def test_brief_metric_names_are_exported() -> None:
    _, registry = exercised(snapshot(per_stream=[figures("a")]))
    names = {s.name for _, _, s in samples(registry)}
    expected = {
        "trackin_observations_total",
        "trackin_http_requests_total",
        "trackin_http_request_duration_seconds_bucket",
        "trackin_websocket_connections_open",
        "trackin_websocket_connections_total",
        "trackin_websocket_messages_total",
        "trackin_engine_batch_size_bucket",
        "trackin_engine_step_duration_seconds_bucket",
        "trackin_engine_pending_observations",
        "trackin_ingest_latency_seconds_bucket",
        "trackin_observation_loss_bucket",
        "trackin_observation_loss_sum",
        "trackin_observation_loss_count",
        "trackin_drifts_total",
        "trackin_checkpoint_writes_total",
        "trackin_checkpoint_duration_seconds_bucket",
        "trackin_checkpoint_failures_total",
        "trackin_log_entries",
        "trackin_store_up",
        "trackin_stream_restore_duration_seconds_bucket",
        "trackin_evictions_total",
        "trackin_gc_pause_seconds_bucket",
        "trackin_gc_frozen_objects",
        "trackin_fleet_loss_ewma_bucket",
        "trackin_fleet_loss_ewma_gsum",
        "trackin_fleet_loss_ewma_gcount",
        "trackin_fleet_beta_bucket",
        "trackin_fleet_eps_norm_bucket",
        "trackin_streams_resident",
        "trackin_streams",
        "trackin_state_bytes",
        "trackin_device_memory_bytes",
        "trackin_stream_series_dropped",
        "trackin_snapshot_duration_seconds",
        "trackin_snapshot_errors_total",
        "trackin_build_info",
        "trackin_process_resident_memory_bytes",
        *PER_STREAM,
    }
    assert expected <= names, sorted(expected - names)


def test_fixed_label_sets_exist_before_any_event() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for outcome in OUTCOMES:
        for transport in TRANSPORTS:
            labels = {"outcome": outcome, "transport": transport}
            assert value(registry, "trackin_observations_total", **labels) == 0
    for checkpoint in CHECKPOINT_OUTCOMES:
        assert value(registry, "trackin_checkpoint_writes_total", outcome=checkpoint) == 0
    names = {s.name for _, _, s in samples(registry)}
    assert not any(n.startswith("trackin_fleet") for n in names), "no snapshot source, no fleet series"
    assert "trackin_store_up" not in names, "no store has reported: missing, not down"


def test_names_are_claimed_at_registration() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(DuplicateTimeseries):
        Metrics(registry, process_metrics=False)


def test_invalid_cap_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_stream_series: -1"):
        Metrics(CollectorRegistry(), max_stream_series=-1)


# --- helpers ----------------------------------------------------------------------------------------


def test_helpers_update_their_instruments() -> None:
    _, registry = exercised(snapshot())
    assert value(registry, "trackin_observations_total", outcome="applied", transport="rest") == 3
    assert value(registry, "trackin_websocket_connections_open") == 0
    assert value(registry, "trackin_websocket_connections_total") == 1
    assert value(registry, "trackin_websocket_messages_total", outcome="error") == 1
    assert value(registry, "trackin_checkpoint_writes_total", outcome="accepted") == 5
    assert value(registry, "trackin_checkpoint_failures_total") == 1
    assert value(registry, "trackin_checkpoint_duration_seconds_count") == 1
    assert value(registry, "trackin_log_entries") == 12
    assert value(registry, "trackin_store_up") == 1
    assert value(registry, "trackin_evictions_total") == 2
    assert value(registry, "trackin_engine_batch_size_sum") == 16
    labels = {"route": "/v1/streams/{stream_id}", "method": "PUT", "status": "201"}
    assert value(registry, "trackin_http_requests_total", **labels) == 1


LOSS_CASES: list[list[float]] = [
    [],
    [0.0, 1e-6, 1e-6 * (1 + 1e-12), 0.3, 0.5, 1.0, 1e4, 1e4 * 2],
    [float("nan"), float("inf"), 0.2, -1.0],
    [10.0**k for k in range(-9, 7)],
    [10.0 ** (k / 4) for k in range(-36, 28)] + [float("nan"), float("-inf"), 0.0],  # numpy's path (> 16)
]


@pytest.mark.parametrize("losses", LOSS_CASES)
def test_bulk_losses_equal_one_at_a_time_observe(losses: list[float]) -> None:
    registry, reference = CollectorRegistry(), CollectorRegistry()
    Metrics(registry, process_metrics=False).observe_losses(torch.tensor(losses, dtype=torch.float64))
    loop = Histogram("trackin_observation_loss", "ref", buckets=LOSS_BUCKETS, registry=reference)
    for loss in losses:
        if math.isfinite(loss):  # non-finite losses are counted by outcome="nonfinite" instead
            loop.observe(loss)
    assert buckets(registry, "trackin_observation_loss") == buckets(reference, "trackin_observation_loss")
    got = value(registry, "trackin_observation_loss_sum")
    assert got == pytest.approx(value(reference, "trackin_observation_loss_sum"))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=64))
def test_bulk_losses_match_loop_for_any_batch(losses: list[float]) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, process_metrics=False)
    metrics.observe_losses(np.asarray(losses))
    metrics.observe_losses(losses[:3])  # sequences work too; counts accumulate
    expected = loop_cumulative(LOSS_BUCKETS, losses + losses[:3])
    assert buckets(registry, "trackin_observation_loss") == expected


# --- scrape-time snapshot ---------------------------------------------------------------------------

FLEET_CASES: list[tuple[str, str, Sequence[float], Sequence[float]]] = [
    ("loss", "trackin_fleet_loss_ewma", LOSS_BUCKETS, [0.1, 0.1, 0.3, 2e-6, 5e4, math.nan, INF]),
    ("beta", "trackin_fleet_beta", BETA_BUCKETS, [0.0, 0.0, 0.1, 0.15, 1.0, 1.5, 999.0, 2000.0]),
    ("eps", "trackin_fleet_eps_norm", EPS_NORM_BUCKETS, [0.0, 0.0, 0.0, 1e-9, 1e-8, 3e-3, 150.0]),
    ("loss", "trackin_fleet_loss_ewma", LOSS_BUCKETS, []),
]


@pytest.mark.parametrize(("field", "name", "bounds", "values"), FLEET_CASES)
def test_fleet_histograms_count_right(
    field: str, name: str, bounds: Sequence[float], values: Sequence[float]
) -> None:
    snap = {
        "loss": lambda: snapshot(loss=values),
        "beta": lambda: snapshot(beta=values),
        "eps": lambda: snapshot(eps=values),
    }[field]()
    _, registry = exercised(snap)
    # beta goes in as float32: compare the float32 values the exporter sees, not the decimal literals
    dtype = torch.float32 if field == "beta" else torch.float64
    host = [float(v) for v in torch.tensor(values, dtype=dtype)]
    assert buckets(registry, name) == loop_cumulative(bounds, host)
    assert value(registry, f"{name}_gcount") == len(values)
    finite_sum = sum(v for v in host if math.isfinite(v))
    assert value(registry, f"{name}_gsum") == pytest.approx(finite_sum)


def test_fleet_gauges_follow_the_snapshot() -> None:
    calls: list[int] = []

    def source() -> FleetSnapshot:
        calls.append(1)
        return snapshot(loss=[0.1] * len(calls))

    registry = CollectorRegistry()
    Metrics(registry).set_snapshot_source(source)
    assert value(registry, "trackin_streams_resident") == 1
    assert value(registry, "trackin_streams") == 2 + 7  # each scrape calls the source again
    assert value(registry, "trackin_state_bytes") == 4096
    assert value(registry, "trackin_device_memory_bytes", device="cpu") == 1 << 20


@pytest.mark.parametrize(("cap", "n"), [(3, 5), (3, 3), (0, 4), (100, 0)])
def test_opt_in_series_are_capped(cap: int, n: int) -> None:
    streams = [figures(f"s{i:02d}", steps=i) for i in reversed(range(n))]
    _, registry = exercised(snapshot(per_stream=streams), max_stream_series=cap)
    found = samples(registry)
    for name in PER_STREAM:
        exported = sorted(s.labels["stream"] for _, _, s in found if s.name == name)
        assert exported == [f"s{i:02d}" for i in range(min(cap, n))], name
    assert value(registry, "trackin_stream_series_dropped") == max(n - cap, 0)
    if min(cap, n) > 1:
        assert value(registry, "trackin_stream_steps_total", stream="s01") == 1


def test_failing_source_keeps_the_scrape() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def broken() -> FleetSnapshot:
        raise RuntimeError("engine gone")

    metrics.set_snapshot_source(broken)
    metrics.observed("rejected", "ws")
    assert value(registry, "trackin_observations_total", outcome="rejected", transport="ws") == 1
    assert value(registry, "trackin_snapshot_errors_total") == 2  # counted in the scrape it happened
    assert not [s for _, _, s in samples(registry) if s.name.startswith("trackin_fleet")]


def test_snapshot_tensors_may_need_grad_or_other_dtypes() -> None:
    loss = torch.tensor([0.1, 0.2], requires_grad=True) * 1.0
    snap = FleetSnapshot(
        loss_ewma=loss,
        beta=torch.tensor([1, 0], dtype=torch.int64),
        eps_norm=torch.zeros(2, dtype=torch.float16),
        resident_streams=2,
        total_streams=2,
        state_bytes=0,
        device_memory_bytes={},
        per_stream=[],
    )
    _, registry = exercised(snap)
    assert value(registry, "trackin_fleet_loss_ewma_gcount") == 2
    assert buckets(registry, "trackin_fleet_beta")[0] == 1  # the zero, in le="0.0"


def test_exposition_parses() -> None:
    registry = CollectorRegistry()
    Metrics(registry).set_snapshot_source(lambda: snapshot(per_stream=[figures('a "b"\n')]))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert len({f.name for f in families}) == len(families), "one TYPE line per name"
    loss = [f for f in families if f.name == "trackin_stream_loss_ewma"]
    assert loss[0].samples[0].labels == {"stream": 'a "b"\n'}
