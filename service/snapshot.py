"""Fleet figures read from the engine's stacked tensors at scrape time (vectorised over slots)."""

from __future__ import annotations

import torch

from trackin.models.engine import Engine
from trackin.service.domain.registry import Registry
from trackin.service.metrics import FleetSnapshot, StreamFigures

__all__ = ["fleet_snapshot"]


def _device_memory(engine: Engine) -> dict[str, int]:
    if engine.device.type == "cuda":
        return {str(engine.device): int(torch.cuda.memory_allocated(engine.device))}
    return {str(engine.device): engine.state_bytes()}


def fleet_snapshot(
    engine: Engine, registry: Registry, total_streams: int | None, max_series: int
) -> FleetSnapshot:
    """Loss EWMA, beta_t and ||eps|| of every resident stream that has stepped, plus opt-in series."""
    losses: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    eps: list[torch.Tensor] = []
    for pool in engine.pools:
        used = pool.used_mask()
        stepped = used & (pool.state["opt/step"] > 0)
        losses.append(pool.state["fig/loss_ewma"][stepped].double().cpu())
        betas.append(pool.state["fig/beta"][stepped].double().cpu())
        eps.append(pool.state["fig/eps_norm"][stepped].double().cpu())
    per_stream: list[StreamFigures] = []
    for stream_id, record in registry.records.items():
        if len(per_stream) > max_series:
            break  # one past the cap, so Metrics can count what it drops
        if record.spec.export_metrics and stream_id in engine:
            location = engine.locate(stream_id)
            row = {
                k: location.pool.state[k][location.slot].item()
                for k in ("opt/step", "fig/loss_ewma", "fig/beta", "fig/eps_norm", "fig/grad_norm")
            }
            per_stream.append(
                StreamFigures(
                    stream=stream_id,
                    steps=int(row["opt/step"]),
                    loss_ewma=row["fig/loss_ewma"],
                    beta=row["fig/beta"],
                    eps_norm=row["fig/eps_norm"],
                    grad_norm=row["fig/grad_norm"],
                )
            )
    empty = torch.zeros(0, dtype=torch.float64)
    return FleetSnapshot(
        loss_ewma=torch.cat(losses) if losses else empty,
        beta=torch.cat(betas) if betas else empty,
        eps_norm=torch.cat(eps) if eps else empty,
        resident_streams=len(engine),
        total_streams=total_streams if total_streams is not None else len(engine),
        state_bytes=engine.state_bytes(),
        device_memory_bytes=_device_memory(engine),
        per_stream=per_stream,
    )
