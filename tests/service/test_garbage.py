"""The served app keeps start-up's long-lived objects out of collections and times every collection
(service/garbage.py)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from trackin.service.app import create_app
from trackin.service.settings import Settings
from trackin.service.state import AppState


def _pauses(state: AppState, generation: int) -> float:
    value = state.metrics.registry.get_sample_value(
        "trackin_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


async def test_what_is_alive_at_readiness_is_frozen_and_collections_are_timed(tmp_path: Path) -> None:
    app = create_app(Settings(store="memory", data_dir=tmp_path))
    thresholds = gc.get_threshold()
    try:
        async with app.router.lifespan_context(app):
            state: AppState = app.state.trackin
            assert not state.ready  # the readiness task has not run yet
            made_before_readiness = [object()]  # as the warm-up's compiled objects are
            for _ in range(600):
                if state.ready:
                    break
                await asyncio.sleep(0.05)
            assert state.ready
            tracked = {id(o) for g in range(3) for o in gc.get_objects(g)}
            assert id(made_before_readiness) not in tracked  # frozen: no collection scans it

            before = _pauses(state, 2)
            gc.collect()
            assert _pauses(state, 2) == before + 1
        after_stop = _pauses(state, 2)
        gc.collect()
        assert _pauses(state, 2) == after_stop  # the timer left with the app
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _young_collections(http: httpx.Client) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "trackin_gc_pause_seconds_count" and sample.labels["generation"] == "0":
                return sample.value
    raise AssertionError("no trackin_gc_pause_seconds_count{generation='0'} in /metrics")


def test_batched_requests_are_freed_before_a_collection_scans_them(http: httpx.Client) -> None:
    """With CPython's threshold (700) each request of 1,000 observations set off several young collections."""
    streams = [f"gc-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]
    for stream in streams:
        assert http.put(f"/v1/streams/{stream}", json={"model": {"family": "linear", "in_dim": 4}}).is_success
    rng = np.random.default_rng(0)
    body = {
        "observations": [
            {"stream": streams[i % len(streams)], "x": row, "y": float(rng.normal())}
            for i, row in enumerate(rng.normal(size=(1000, 4)).tolist())
        ]
    }
    http.post("/v1/observations", json=body).raise_for_status()  # anything a first request sets up
    before = _young_collections(http)
    for _ in range(20):
        http.post("/v1/observations", json=body).raise_for_status()
    assert _young_collections(http) - before < 10
