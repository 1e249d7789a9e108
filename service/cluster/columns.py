"""The columnar form in cluster mode: ``{"streams": [...], "x": [[...]], "y": [...]}`` through any replica.

The rows are split by partition; each part travels as a columnar body of its own (MessagePack, raw
little-endian float64 buffers: exact), is checked by its owner with single-node's rules, logged, applied
as one columnar batch and answered with raw columns. The front checks what no owner can see alone (every
part's streams take one shape), then merges the parts' columns back in row order, so the answer is the
single node's: the same arrays, rendered by the same encoders (JSON, or MessagePack buffers on the
WebSocket). A refusal names the row by its index in the request (``x[3]``, ``streams[2]``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
import orjson

from trackin.models.specs import ARModel, StreamSpec, TrackModel
from trackin.service.cluster.front import Front
from trackin.service.cluster.many import Outcome, Pending, answers, check, merged, publish, refusal, route
from trackin.service.cluster.messages import Answer
from trackin.service.domain.columns import Columns, build_columns
from trackin.service.errors import InvalidInput, PayloadTooLarge, ServiceError
from trackin.service.security.namespace import Namespace
from trackin.service.transport.columnar import columns_of
from trackin.service.transport.results import encode_columns_json
from trackin.service.transport.wire import ObservationsBody, decode_msgpack

__all__ = ["Encode", "part_body", "part_columns", "shape_body", "submit_columns"]

ROWS = re.compile(r"\b(streams|x|y|value|ts)\[(\d+)\]")
"""Where a columnar error names a row (``x[3]``)."""
_FLOATS = ("prediction", "loss", "forecast")
_FLAGS = ("applied", "warming")
_POSITIONS = ("skipped", "drift")

Encode = Callable[[dict[str, np.ndarray]], bytes]
"""Renders the merged columns (REST: `encode_columns_json`; the WebSocket adds its ``seq``)."""


async def submit_columns(
    front: Front,
    body: ObservationsBody,
    namespace: Namespace,
    limit: int,
    encode: Encode | None,
    after: Awaitable[Any] | None = None,
) -> Pending:
    """Check and log a columnar body's parts; the refusal, or the merged answer to come (``after``: as
    `many.submit_items`)."""
    columns = columns_of(body)
    assert columns is not None
    n = len(columns.streams)
    if n > limit:
        raise PayloadTooLarge(f"{n} observations exceed the limit of {limit} per request", field="streams")
    columns.streams = namespace.streams(columns.streams, "streams")
    groups = await route(front, columns.streams)
    bodies = {p: part_body(columns, indices) for p, indices in groups.items()}
    checks = await check(front, groups, columns.streams, "check_columns", bodies)
    refused = refusal(checks, groups, ROWS)
    if refused is not None:
        return refused
    checked = {p: orjson.loads(a.body) for p, a in checks.items()}
    _one_shape(columns.streams, groups, {p: tuple(c["shape"]) for p, c in checked.items()})
    refusals = {
        p: Answer(c["refused"]["status"], orjson.dumps(c["refused"]["body"]))
        for p, c in checked.items()
        if c["refused"] is not None
    }
    refused = refusal(refusals, groups, ROWS)
    if refused is not None:
        return refused
    if after is not None:
        await after
    logged = await publish(front, groups, columns.streams, "observe_columns", bodies)
    return asyncio.create_task(_gathered(n, list(groups.values()), logged, encode or encode_columns_json))


def part_body(columns: Columns, indices: list[int]) -> bytes:
    """The rows ``indices`` of a body as a columnar MessagePack body of their own."""
    rows = np.asarray(indices)
    body: dict[str, Any] = {"streams": [columns.streams[i] for i in indices], "dtype": "f8"}
    for name in ("x", "y", "value", "ts"):
        array = getattr(columns, name)
        if array is not None:
            body[name] = np.ascontiguousarray(array[rows], dtype="<f8").tobytes()
    return msgspec.msgpack.encode(body)


def part_columns(raw: bytes) -> Columns:
    """A part's body as the owner reads it."""
    columns = columns_of(decode_msgpack(raw, ObservationsBody))
    assert columns is not None
    return columns


def shape_body(spec: StreamSpec, columns: Columns, specs: dict[str, StreamSpec]) -> bytes:
    """An owner's answer to a part's check, once its streams are known: the shape its first stream takes
    (`trackin.service.domain.columns`' rule: series and width, or input and output widths), which the
    front compares across parts first, as single-node does; then the part's refusal by `build_columns`
    (status and body), if any."""
    model = spec.model
    if isinstance(model, ARModel | TrackModel):
        shape = [True, model.dim, 0]
    else:
        shape = [False, model.in_dim, model.out_dim]
    try:
        build_columns(columns, specs)
    except ServiceError as exc:
        return orjson.dumps({"shape": shape, "refused": {"status": exc.status, "body": exc.body()}})
    return orjson.dumps({"shape": shape, "refused": None})


def _one_shape(streams: list[str], groups: dict[int, list[int]], shapes: dict[int, tuple[Any, ...]]) -> None:
    """Single-node's rule across the parts: every stream of a columnar body takes one shape."""
    first = next(p for p, indices in groups.items() if indices[0] == 0)
    other = [groups[p][0] for p, shape in shapes.items() if shape != shapes[first]]
    if other:
        i = min(other)
        raise InvalidInput(
            "a columnar body takes streams of one shape (the same model widths): "
            f"{streams[i]!r} differs from {streams[0]!r}; use the 'observations' form",
            field=f"streams[{i}]",
            stream=streams[i],
        )


def _read_part(raw: bytes, rows: int) -> dict[str, np.ndarray] | None:
    """An owner's MessagePack columns (`encode_columns_msgpack`) as arrays; None if they are not the
    part's ``rows`` (a replay after a failover, some rows in a checkpoint already: applied, not answered)."""
    body = msgspec.msgpack.decode(raw)
    floats = np.dtype("<f4" if body.get("dtype") == "f4" else "<f8")
    out: dict[str, np.ndarray] = {"step": np.frombuffer(body["step"], "<i8")}
    if out["step"].size != rows:
        return None
    for name in (*_FLOATS, *_FLAGS):
        if name in body:
            kind = np.dtype(bool) if name in _FLAGS else floats
            array = np.frombuffer(body[name], kind)
            out[name] = array if array.size == rows else array.reshape(rows, -1)
    for name in _POSITIONS:
        out[name] = np.asarray(body.get(name, []), np.int64)
    return out


async def _gathered(
    n: int, groups: list[list[int]], logged: list[asyncio.Task[Answer] | BaseException], encode: Encode
) -> Answer:
    outcomes: list[Outcome] = await answers(logged)
    whole: dict[str, np.ndarray] = {}
    positions: dict[str, list[np.ndarray]] = {name: [] for name in _POSITIONS}

    def place(indices: list[int], answer: Answer) -> bool:
        part = _read_part(answer.body, len(indices))
        if part is None:
            return False
        rows = np.asarray(indices)
        for name, values in part.items():
            if name in _POSITIONS:
                positions[name].append(rows[values])
                continue
            if name not in whole:
                whole[name] = np.zeros((n, *values.shape[1:]), values.dtype)
            whole[name][rows] = values
        return True

    def render() -> bytes:
        columns = {name: whole[name] for name in ("step", "prediction", "loss", "applied")}
        for name in _POSITIONS:
            found = positions[name]
            columns[name] = np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)
        for name in ("forecast", "warming"):
            if name in whole:
                columns[name] = whole[name]
        return encode(columns)

    return merged(n, groups, outcomes, place, ROWS, render, None)
