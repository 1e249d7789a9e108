"""Fleet figures read from the engine at scrape time, through its typed accessors (vectorised over slots)."""

from __future__ import annotations

import torch

from trackin.models.engine import Engine
from trackin.service.domain.catalog import Catalog
from trackin.service.metrics import FleetSnapshot, StreamFigures

__all__ = ["fleet_snapshot"]


def _device_memory(engine: Engine) -> dict[str, int]:
    if engine.device.type == "cuda":
        return {str(engine.device): int(torch.cuda.memory_allocated(engine.device))}
    return {str(engine.device): engine.state_bytes()}


def fleet_snapshot(
    engine: Engine, catalog: Catalog, total_streams: int | None, max_series: int
) -> FleetSnapshot:
    """Loss EWMA, beta_t and ||eps|| of every resident stream that has stepped, plus opt-in series."""
    fleet = engine.fleet_figures()
    opted: list[str] = []
    for stream_id, record in catalog.items():
        if len(opted) > max_series:
            break  # one past the cap, so Metrics can count what it drops
        if record.spec.export_metrics and stream_id in engine:
            opted.append(stream_id)
    per_stream = [
        StreamFigures(
            stream=stream_id,
            steps=f.steps,
            loss_ewma=f.loss_ewma,
            beta=f.beta,
            eps_norm=f.eps_norm,
            grad_norm=f.grad_norm,
        )
        for stream_id, f in zip(opted, engine.figures_of(opted), strict=True)
    ]
    return FleetSnapshot(
        loss_ewma=fleet.loss_ewma,
        beta=fleet.beta,
        eps_norm=fleet.eps_norm,
        skill=fleet.skill,
        resident_streams=len(engine),
        total_streams=total_streams if total_streams is not None else len(engine),
        state_bytes=engine.state_bytes(),
        device_memory_bytes=_device_memory(engine),
        per_stream=per_stream,
    )
