"""An observation's answer and a prediction as the wire carries them (REST, WebSocket, replay)."""

from __future__ import annotations

from typing import Any

from trackin.models.engine import ItemResult
from trackin.models.specs import ARModel, StreamSpec, TrackModel

__all__ = ["result_json", "shape_prediction"]


def shape_prediction(spec: StreamSpec, values: list[float] | None) -> float | list[float] | None:
    """A scalar for single-output models, a list otherwise (as clients send ``y``)."""
    if values is None:
        return None
    model = spec.model
    return (
        values[0]
        if (model.dim if isinstance(model, ARModel | TrackModel) else model.out_dim) == 1
        else values
    )


def result_json(spec: StreamSpec, result: ItemResult, stream: str | None = None) -> dict[str, Any]:
    """One observation's answer on the wire."""
    out: dict[str, Any] = {}
    if stream is not None:
        out["stream"] = stream
    out["step"] = result.step
    out["prediction"] = shape_prediction(spec, result.prediction)
    out["loss"] = result.loss
    out["applied"] = result.applied
    if result.nonfinite:
        out["skipped"] = "nonfinite"
    if isinstance(spec.model, ARModel | TrackModel):
        out["forecast"] = shape_prediction(spec, result.forecast)
        out["warming"] = result.warming
    if result.drift:
        out["drift"] = True
    return out
