"""Columnar observation bodies: ``{"streams": [...], "x": [[...]], "y": [...]}`` checked as whole arrays.

Every named stream must take the same widths (one ``x`` width and one ``y`` width, or one series ``value``
width), so the body decodes into ``x [n, d]`` and ``y [n, k]`` arrays with no object per item (MessagePack
frames carry them as raw little-endian float buffers, read with ``np.frombuffer``). Checks are vectorised;
the first bad row is named (``x[3]``), and a bad row rejects the whole body before anything is applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import IngestBatch
from trackin.service.errors import InvalidInput

__all__ = ["Columns", "build_columns"]


@dataclass(slots=True)
class Columns:
    """A decoded columnar body: stream ids and their columns as float64 arrays (None: absent)."""

    streams: list[str]
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    value: np.ndarray | None = None
    ts: np.ndarray | None = None


def _finite(array: np.ndarray, name: str, streams: Sequence[str]) -> None:
    if np.isfinite(array).all():  # one reduction; the per-row one only to name the first bad row
        return
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise InvalidInput(
            "values must be finite numbers (no NaN or infinity)", field=f"{name}[{i}]", stream=streams[i]
        )


def _shape(spec: StreamSpec) -> tuple[bool, int, int]:
    """(series, input width, output width): called for every stream a body names, so by ``family``, not
    ``isinstance`` (half the cost)."""
    model = spec.model
    if model.family == "ar" or model.family == "track":
        return True, model.dim, 0
    return False, model.in_dim, model.out_dim


def _width(array: np.ndarray, width: int, name: str, streams: Sequence[str]) -> None:
    if array.shape[1] != width:
        raise InvalidInput(
            f"expected {width} values per row, got {array.shape[1]}", field=f"{name}[0]", stream=streams[0]
        )


def build_columns(columns: Columns, specs: Mapping[str, StreamSpec]) -> IngestBatch:
    """Check a columnar body against its streams' specs; the batch, or ``InvalidInput`` naming the field.

    ``specs``: the spec of each stream the body names, and of no other (as the registry looks them up)."""
    streams = columns.streams
    named = dict(specs)
    kind = _shape(specs[streams[0]])
    series, width, out = kind
    # Streams of equal specs share one spec object (the engine's): one object, one shape, checked in C.
    shared = len(set(map(id, named.values()))) == 1
    if not shared and any(_shape(spec) != kind for spec in named.values()):  # per row only to name it
        i = next(i for i, s in enumerate(streams) if _shape(specs[s]) != kind)
        raise InvalidInput(
            "a columnar body takes streams of one shape (the same model widths): "
            f"{streams[i]!r} differs from {streams[0]!r}; use the 'observations' form",
            field=f"streams[{i}]",
            stream=streams[i],
        )
    batch = IngestBatch(list(streams), specs=named)
    if series:
        for name in ("x", "y"):
            if getattr(columns, name) is not None:
                raise InvalidInput(
                    f"series streams take 'value', not '{name}'", field=name, stream=streams[0]
                )
        if columns.value is None:
            raise InvalidInput("series streams take 'value' (the newly observed values)", field="value")
        _width(columns.value, width, "value", streams)
        _finite(columns.value, "value", streams)
        batch.x = columns.value
        if columns.ts is not None:
            batch.t = _times(columns.ts, streams)
        return batch
    for name in ("value", "ts"):
        if getattr(columns, name) is not None:
            raise InvalidInput(f"this stream takes 'x' and 'y', not '{name}'", field=name, stream=streams[0])
    if columns.x is None:
        raise InvalidInput("missing 'x'", field="x")
    if columns.y is None:
        raise InvalidInput("missing 'y' (use /predict for predictions without a label)", field="y")
    _width(columns.x, width, "x", streams)
    _width(columns.y, out, "y", streams)
    _finite(columns.x, "x", streams)
    _finite(columns.y, "y", streams)
    first = named[streams[0]]
    if first.loss == "bce" if shared else any(spec.loss == "bce" for spec in named.values()):
        bce = np.fromiter((specs[s].loss == "bce" for s in streams), bool, len(streams))
        outside = bce & ~((columns.y >= 0) & (columns.y <= 1)).all(axis=1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise InvalidInput("bce targets must lie in [0, 1]", field=f"y[{i}]", stream=streams[i])
    batch.x, batch.y = columns.x, columns.y
    return batch


def _times(ts: np.ndarray, streams: Sequence[str]) -> np.ndarray:
    """Finite, and increasing along each stream within the body (one stable sort, no loop over items)."""
    t = ts[:, 0] if ts.ndim == 2 else ts
    if ts.ndim == 2 and ts.shape[1] != 1:
        raise InvalidInput("ts takes one number per row", field="ts")
    _finite(t[:, None], "ts", streams)
    codes: dict[str, int] = {}
    code = np.fromiter((codes.setdefault(s, len(codes)) for s in streams), np.int64, len(streams))
    order = np.argsort(code, kind="stable")
    same = code[order][1:] == code[order][:-1]
    bad = same & ~(t[order][1:] > t[order][:-1])
    if bad.any():
        i = int(order[1:][bad].min())
        raise InvalidInput("ts must increase along a stream", field=f"ts[{i}]", stream=streams[i])
    return np.ascontiguousarray(t)
