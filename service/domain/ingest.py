"""Check a request's observations against their streams' specs and stack them for the engine.

Per-item work is limited to reading fields and comparing lengths; the numbers themselves are converted and
checked for finiteness in one numpy operation per width. The whole request is checked before anything is
applied, so one bad item rejects the request and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trackin.models.specs import ARModel, StreamSpec, TrackModel
from trackin.service.errors import InvalidInput
from trackin.service.transport.wire import ObservationIn

__all__ = ["IngestBatch", "build_batch", "check_vector"]


@dataclass(slots=True)
class IngestBatch:
    """Validated observations, in request order, ready for ``Engine.observe``."""

    stream_ids: list[str] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray | None] = field(default_factory=list)
    times: list[float | None] | None = None
    """Series' times (``ts``) per item, None for none; None when no item carries one."""
    specs: dict[str, StreamSpec] = field(default_factory=dict)
    transport: str = "rest"

    def __len__(self) -> int:
        return len(self.stream_ids)


def _as_list(value: float | list[float]) -> list[float]:
    return value if isinstance(value, list) else [value]


def _fail(message: str, where: str, stream: str) -> InvalidInput:
    return InvalidInput(message, field=where, stream=stream)


def check_vector(values: Sequence[float], width: int, where: str, stream: str) -> np.ndarray:
    """One vector: right length and finite (for single-item control-plane calls such as predict)."""
    if len(values) != width:
        raise _fail(f"expected {width} values, got {len(values)}", where, stream)
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise _fail("values must be finite numbers (no NaN or infinity)", f"{where}[{bad[0]}]", stream)
    return array


def build_batch(
    items: Sequence[ObservationIn],
    specs: Mapping[str, StreamSpec],
    *,
    default_stream: str | None = None,
    prefix: str = "observations",
) -> IngestBatch:
    """Validate every item; raise ``InvalidInput`` naming the first bad field (``observations[i].x``)."""
    batch = IngestBatch()
    # rows waiting for one numpy conversion per width: (position, field suffix, values); the field's full
    # name (observations[3].x) is only spelt out for an error
    pending: dict[int, list[tuple[int, str, list[float]]]] = {}
    last_ts: dict[str, float] = {}  # a series' times must increase within the request too
    ids = batch.stream_ids
    for i, item in enumerate(items):
        stream = item.stream if item.stream is not None else default_stream
        if stream is None:
            raise InvalidInput("each observation needs a 'stream'", field=f"{prefix}[{i}].stream")
        if default_stream is not None and stream != default_stream:
            raise _fail(
                f"observation for {stream!r} posted to stream {default_stream!r}",
                f"{prefix}[{i}].stream",
                stream,
            )
        spec = specs[stream]
        batch.specs[stream] = spec
        model = spec.model
        if isinstance(model, ARModel | TrackModel):
            family = model.family
            if item.value is None:
                raise _fail(
                    f"{family} streams take 'value' (the newly observed values)",
                    f"{prefix}[{i}].value",
                    stream,
                )
            if item.x is not None or item.y is not None:
                raise _fail(f"{family} streams take 'value', not 'x'/'y'", f"{prefix}[{i}].x", stream)
            value = _as_list(item.value)
            if len(value) != model.dim:
                raise _fail(f"expected {model.dim} values, got {len(value)}", f"{prefix}[{i}].value", stream)
            pending.setdefault(model.dim, []).append((i, "value", value))
            if item.ts is not None:
                _check_time(item.ts, last_ts, stream, f"{prefix}[{i}].ts")
                last_ts[stream] = item.ts
                if batch.times is None:
                    batch.times = [None] * i
            if batch.times is not None:
                batch.times.append(item.ts)
        else:
            if batch.times is not None:
                batch.times.append(None)
            if item.value is not None:
                raise _fail("this stream takes 'x' and 'y', not 'value'", f"{prefix}[{i}].value", stream)
            if item.x is None:
                raise _fail("missing 'x'", f"{prefix}[{i}].x", stream)
            if item.y is None:
                raise _fail(
                    "missing 'y' (use /predict for predictions without a label)", f"{prefix}[{i}].y", stream
                )
            in_dim, out_dim = model.in_dim, model.out_dim
            if len(item.x) != in_dim:
                raise _fail(f"expected {in_dim} values, got {len(item.x)}", f"{prefix}[{i}].x", stream)
            y = _as_list(item.y)
            if len(y) != out_dim:
                raise _fail(f"expected {out_dim} target values, got {len(y)}", f"{prefix}[{i}].y", stream)
            pending.setdefault(in_dim, []).append((i, "x", item.x))
            pending.setdefault(-out_dim, []).append((i, "y", y))
        ids.append(stream)
    n = len(ids)
    batch.inputs = [_EMPTY] * n
    batch.targets = [None] * n
    for width, rows in pending.items():
        array = np.array([values for _, _, values in rows], dtype=np.float64)
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            position, name, _ = rows[int(np.flatnonzero(~finite)[0])]
            raise _fail(
                "values must be finite numbers (no NaN or infinity)",
                f"{prefix}[{position}].{name}",
                ids[position],
            )
        if width < 0 and any(spec.loss == "bce" for spec in batch.specs.values()):
            for (position, name, _), row in zip(rows, array, strict=True):
                if specs[ids[position]].loss == "bce" and not ((row >= 0) & (row <= 1)).all():
                    raise _fail(
                        "bce targets must lie in [0, 1]", f"{prefix}[{position}].{name}", ids[position]
                    )
        column: list[Any] = batch.targets if width < 0 else batch.inputs
        if len(rows) == n:
            column[:] = array
        else:
            for (position, _, _), row in zip(rows, array, strict=True):
                column[position] = row
    return batch


_EMPTY = np.empty(0)


def _check_time(ts: float, last: dict[str, float], stream: str, where: str) -> None:
    """A finite time, after the stream's previous one in this request (the engine refuses, without a
    step, a time that is not after the last one it applied)."""
    if not math.isfinite(ts):
        raise _fail("ts must be a finite number", where, stream)
    previous = last.get(stream)
    if previous is not None and not ts > previous:
        raise _fail(f"ts must increase along a stream: {ts} after {previous}", where, stream)
