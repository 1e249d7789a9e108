"""An observation's answer and a prediction as the wire carries them (REST, WebSocket, replay).

Answers are built from the engine's `Outcomes` columns: one ``tolist`` per column and one dict per item for
the row form (``{"results": [...]}``), or the columns themselves for the columnar form (serialised by orjson
straight from the arrays).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import orjson
from starlette.responses import Response

from trackin.models.engine import ItemResult, Outcomes
from trackin.models.specs import ARModel, StreamSpec, TrackModel

__all__ = [
    "JsonAnswer",
    "columns_json",
    "columns_msgpack",
    "encode_columns_json",
    "encode_columns_msgpack",
    "is_series",
    "result_json",
    "results_json",
    "shape_prediction",
    "shape_width",
]


def shape_width(spec: StreamSpec) -> int:
    """Values per prediction: a series' dimension, a model's outputs."""
    model = spec.model
    return model.dim if isinstance(model, ARModel | TrackModel) else model.out_dim


def is_series(spec: StreamSpec) -> bool:
    return isinstance(spec.model, ARModel | TrackModel)


def shape_prediction(spec: StreamSpec, values: list[float] | None) -> float | list[float] | None:
    """A scalar for single-output models, a list otherwise (as clients send ``y``)."""
    if values is None:
        return None
    return values[0] if shape_width(spec) == 1 else values


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


def _shaped(values: np.ndarray, width: int) -> list[Any]:
    """Rows as the wire carries them: scalars for width 1, lists otherwise; None for rows with a NaN."""
    if width == 1:
        column: list[Any] = values[:, 0].tolist()
        return [None if v != v else v for v in column]
    rows = values[:, :width]
    bad = np.isnan(rows).any(axis=1)
    listed: list[Any] = rows.tolist()
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            listed[i] = None
    return listed


def results_json(
    stream_ids: list[str],
    specs: dict[str, StreamSpec],
    outcomes: Outcomes,
    *,
    many: bool,
    uniform: bool = False,
) -> list[dict[str, Any]]:
    """The row-form answers of a batch (``many``: each names its stream), built column by column.
    ``uniform``: the caller knows every stream shares a kind and width (a columnar batch), so the specs
    need not be compared one by one."""
    if not stream_ids:
        return []
    first = specs[stream_ids[0]]
    uniform = uniform or len(specs) == 1 or len({(is_series(s), shape_width(s)) for s in specs.values()}) == 1
    if not uniform:
        return _mixed_json(stream_ids, specs, outcomes, many=many)
    width, series = shape_width(first), is_series(first)
    steps = outcomes.steps.tolist()
    predictions = _shaped(outcomes.predictions, width)
    losses = [None if v != v else v for v in outcomes.losses.tolist()]
    applied = outcomes.applied.tolist()
    if many:
        out = [
            {"stream": s, "step": st, "prediction": p, "loss": lo, "applied": a}
            for s, st, p, lo, a in zip(stream_ids, steps, predictions, losses, applied, strict=True)
        ]
    else:
        out = [
            {"step": st, "prediction": p, "loss": lo, "applied": a}
            for st, p, lo, a in zip(steps, predictions, losses, applied, strict=True)
        ]
    if np.count_nonzero(outcomes.nonfinite):  # rare: the positions only then
        for i in np.flatnonzero(outcomes.nonfinite).tolist():
            out[i]["skipped"] = "nonfinite"
    if series:
        assert outcomes.forecasts is not None
        for item, f, w in zip(
            out, _shaped(outcomes.forecasts, width), outcomes.warming.tolist(), strict=True
        ):
            item["forecast"] = f
            item["warming"] = w
    if np.count_nonzero(outcomes.drift):
        for i in np.flatnonzero(outcomes.drift).tolist():
            out[i]["drift"] = True
    return out


def _mixed_json(
    stream_ids: list[str], specs: dict[str, StreamSpec], outcomes: Outcomes, *, many: bool
) -> list[dict[str, Any]]:
    """Answers of a batch mixing widths or kinds (rare): item by item, each row cut to its stream's width."""
    out = []
    for i, item in enumerate(outcomes.items()):
        spec = specs[stream_ids[i]]
        width = shape_width(spec)
        prediction = outcomes.predictions[i, :width]
        forecast = None if outcomes.forecasts is None else outcomes.forecasts[i, :width]
        fixed = ItemResult(
            item.step,
            None if np.isnan(prediction).any() else prediction.tolist(),
            item.loss,
            item.applied,
            item.warming,
            item.nonfinite,
            item.drift,
            None if forecast is None or np.isnan(forecast).any() else forecast.tolist(),
        )
        out.append(result_json(spec, fixed, stream_ids[i] if many else None))
    return out


def _columns(outcomes: Outcomes, width: int, series: bool) -> dict[str, np.ndarray]:
    """The answer's columns: predictions flat for single-output streams, rows otherwise; ``skipped`` and
    ``drift`` list the positions they concern."""

    def shaped(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values[:, 0] if width == 1 else values[:, :width])

    body = {
        "step": outcomes.steps,
        "prediction": shaped(outcomes.predictions),
        "loss": outcomes.losses,
        "applied": outcomes.applied,
        "skipped": np.flatnonzero(outcomes.nonfinite),
        "drift": np.flatnonzero(outcomes.drift),
    }
    if series and outcomes.forecasts is not None:
        body["forecast"] = shaped(outcomes.forecasts)
        body["warming"] = outcomes.warming
    return body


def columns_json(outcomes: Outcomes, width: int, series: bool, *, seq: Any = None) -> bytes:
    """The columnar answer ``{"step": [...], "prediction": [...], "loss": [...], "applied": [...], ...}``
    (``seq`` first on the WebSocket), serialised by orjson straight from the arrays (NaN: null)."""
    return encode_columns_json(_columns(outcomes, width, series), seq)


def encode_columns_json(columns: dict[str, np.ndarray], seq: Any = None) -> bytes:
    """`columns_json` of columns already cut (a cluster front merges its partitions' columns)."""
    head = {} if seq is None else {"seq": seq}
    return orjson.dumps(head | columns, option=orjson.OPT_SERIALIZE_NUMPY)


def columns_msgpack(outcomes: Outcomes, width: int, series: bool, seq: Any) -> bytes:
    """The columnar answer as MessagePack: each column a raw little-endian buffer (``bin``): ``step``
    int64, ``prediction``/``loss``/``forecast`` float32 or float64 as ``dtype`` says, ``applied`` and
    ``warming`` one byte per item; ``skipped`` and ``drift`` lists of positions."""
    return encode_columns_msgpack(_columns(outcomes, width, series), seq)


def encode_columns_msgpack(columns: dict[str, np.ndarray], seq: Any) -> bytes:
    """`columns_msgpack` of columns already cut."""
    body: dict[str, Any] = {"seq": seq, "dtype": "f4" if columns["prediction"].dtype == np.float32 else "f8"}
    for name, values in columns.items():
        if name in ("skipped", "drift"):
            body[name] = values.tolist()
        else:
            body[name] = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    return msgspec.msgpack.encode(body)


class JsonAnswer(Response):
    """A JSON answer serialised by orjson (NaN as null). A route returning a plain dict pays FastAPI's
    ``jsonable_encoder`` and ``json.dumps``: more than the rest of a stream read (``GET
    /v1/streams/{id}``, ``/predict``) together."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
