"""Control-plane request bodies (pydantic), with the examples shown on /docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trackin.models.specs import StreamSpec

__all__ = ["MAX_BULK_STREAMS", "STREAM_EXAMPLES", "BulkStreamIn", "BulkStreamsIn", "TemplateIn"]

MAX_BULK_STREAMS = 10_000
"""Streams per bulk creation: one request stays well under the body limit and a second of work."""

STREAM_EXAMPLES = {
    "linear": {
        "summary": "Linear model on 16 features, TrackIn defaults",
        "value": {"model": {"family": "linear", "in_dim": 16}},
    },
    "ticks": {
        "summary": "Series model on price changes (one stream per instrument)",
        "value": {
            "model": {"family": "ar", "dim": 1, "lags": 16, "target": "delta"},
            "loss": "huber",
            "optimizer": {"name": "trackin", "lr": 0.01, "beta_rule": "cos"},
        },
    },
    "mlp": {
        "summary": "Small MLP with Adam, float64, exported per-stream metrics",
        "value": {
            "model": {"family": "mlp", "in_dim": 8, "hidden": [32], "activation": "tanh"},
            "optimizer": {"name": "adam", "lr": 0.001},
            "dtype": "float64",
            "export_metrics": True,
        },
    },
}


class TemplateIn(BaseModel):
    """Streams whose ids start with ``prefix`` are created from ``spec`` on their first observation."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prefix": "cam1:",
                    "spec": {"model": {"family": "ar", "dim": 4, "lags": 4, "target": "delta"}},
                    "idle_seconds": 30,
                }
            ]
        },
    )

    prefix: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    spec: StreamSpec
    idle_seconds: float = Field(default=300.0, gt=0, le=30 * 24 * 3600)


class BulkStreamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]{1,128}$")  # not . or ..: checked
    spec: StreamSpec


class BulkStreamsIn(BaseModel):
    """Streams created together, all or nothing (``PUT /v1/streams``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "streams": [
                        {"id": "sensor-1", "spec": {"model": {"family": "linear", "in_dim": 16}}},
                        {"id": "sensor-2", "spec": {"model": {"family": "linear", "in_dim": 16}}},
                    ]
                }
            ]
        },
    )

    streams: list[BulkStreamIn] = Field(min_length=1, max_length=MAX_BULK_STREAMS)
