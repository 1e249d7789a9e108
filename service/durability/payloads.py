"""The durability log's payloads: a batch's observations of one stream, replayable after a crash.

A payload is a fixed little-endian header, ``0xC1`` (a byte MessagePack never starts with, which tells
this format from the earlier MessagePack ones), the format number 2, the owner epoch (i64), the number
of observations ``n`` (u32), the input width ``w``, the target width ``t`` (0 for ``ar``/``track``
streams, whose rows are the arriving values), a flags byte (1: a times column), the length of the base
position (u16) and the base itself; then one float64 matrix ``[n, w + t (+ 1)]`` in apply order: inputs,
targets and, if flagged, the series' times (NaN for none). Raw bytes keep every value exact, and with
every stream's rows one slice of a matrix sorted once per batch, a payload costs one header and one copy:
about a microsecond per stream, which an append of a thousand streams' observations pays a thousand
times. Replay applies them through the same engine call as live traffic, so a restored stream ends in
exactly the state an uninterrupted run would have. Payloads of the first formats (MessagePack maps)
still decode.

Appends are not fenced by the store, so a stream's log can hold entries that no owner ever applied: those
of a stale process (one a newer process took the stream over from) and those of an append that failed
with an unknown outcome (answered 503, yet stored). Each entry therefore says who wrote it (``e``, the
owner epoch) and which state it applies to (``b``, the log position of the last entry its writer had
applied, or of the checkpoint it started from). `plan_replay` keeps exactly one chain of entries, each
applied on top of the one before: an entry from an older epoch than the chain's is a stale writer's and
skipped; an entry whose base is earlier in the chain cuts off what follows its base (its writer never
applied those). Positions are only compared for equality, as the store contract allows.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from trackin.service.domain.ingest import IngestBatch

__all__ = ["LoggedBatch", "ReplayPlan", "decode_payload", "encode_batches", "plan_replay"]


@dataclass(frozen=True, slots=True)
class LoggedBatch:
    """One decoded log entry."""

    position: str
    epoch: int | None
    """Owner epoch of the writer (None in payloads written before epochs were recorded)."""
    base: str | None
    """Log position of the state this entry applies to ("" = the stream's start; None = not recorded)."""
    inputs: list[np.ndarray]
    targets: list[np.ndarray | None]
    times: list[float | None] | None = None
    """A series' times (``ts``), when the observations carried any."""


_MAGIC = b"\xc1"
_FORMAT = 2
_HEAD = struct.Struct("<cBqIHHBH")
_TIMES = 1


def encode_batches(batches: Sequence[IngestBatch], epoch: int, bases: Mapping[str, str]) -> dict[str, bytes]:
    """One payload per stream for the merged batches, observations in apply order.

    ``bases[stream]``: the position of the last entry applied to that stream's state ("" if none).
    """
    ids = [s for b in batches for s in b.stream_ids]
    inputs = [x for b in batches for x in b.inputs]
    targets = [y for b in batches for y in b.targets]
    times: np.ndarray | None = None
    if any(b.times is not None for b in batches):
        times = np.array(
            [np.nan if t is None else t for b in batches for t in (b.times or [None] * len(b))], "<f8"
        )
    codes: dict[str, int] = {}
    code = np.fromiter((codes.setdefault(s, len(codes)) for s in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(code, kind="stable")  # each stream's items together, in apply order
    ends = np.cumsum(np.bincount(code, minlength=len(codes))).tolist()
    flags = _TIMES if times is not None else 0
    table = _table(inputs, targets, times, order)
    out: dict[str, bytes] = {}
    start = 0
    if table is not None:  # the usual batch: one width per side, every stream's rows one slice
        matrix, wx, wy = table
        raw, size = matrix.tobytes(), matrix.shape[1] * 8
        head = _HEAD.pack
        for stream, end in zip(codes, ends, strict=True):
            base = bases.get(stream, "").encode()
            out[stream] = (
                head(_MAGIC, _FORMAT, epoch, end - start, wx, wy, flags, len(base))
                + base
                + raw[start * size : end * size]
            )
            start = end
        return out
    rows_of = order.tolist()
    for stream, end in zip(codes, ends, strict=True):
        rows = rows_of[start:end]
        one = _table([inputs[i] for i in rows], [targets[i] for i in rows], None, np.arange(len(rows)))
        assert one is not None, "a stream's observations share their widths"
        matrix, wx, wy = one
        if times is not None:
            matrix = np.concatenate([matrix, times[rows][:, None]], axis=1)
        base = bases.get(stream, "").encode()
        out[stream] = _HEAD.pack(_MAGIC, _FORMAT, epoch, len(rows), wx, wy, flags, len(base)) + base
        out[stream] += matrix.tobytes()
        start = end
    return out


def _table(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray | None],
    times: np.ndarray | None,
    order: np.ndarray,
) -> tuple[np.ndarray, int, int] | None:
    """Inputs, targets (if any) and times (if given) side by side as one little-endian float64 matrix in
    ``order``, and the two widths; None when the rows do not share their widths (mixed stream kinds)."""
    xs = _stacked(inputs)
    if xs is None:
        return None
    series = targets[0] is None if targets else True
    columns = [xs]
    if not series:
        ys = _stacked(targets)
        if ys is None:
            return None
        columns.append(ys)
    elif any(y is not None for y in targets):
        return None
    if times is not None:
        columns.append(times[:, None])
    matrix = np.concatenate(columns, axis=1) if len(columns) > 1 else xs
    return np.ascontiguousarray(matrix[order], dtype="<f8"), xs.shape[1], 0 if series else columns[1].shape[1]


def _stacked(rows: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """All rows as one matrix when they are vectors of one width (the usual batch), else None.

    One concatenation (about 4x cheaper than ``np.stack`` over thousands of small rows) after a check of
    the widths."""
    if not rows or any(r is None for r in rows):
        return None
    sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # type: ignore[arg-type]
    if (sizes != sizes[0]).any() or any(r.ndim != 1 for r in rows[:1]):  # type: ignore[union-attr]
        return None
    return np.concatenate(rows).reshape(len(rows), int(sizes[0]))  # type: ignore[arg-type]


def decode_payload(position: str, payload: bytes) -> LoggedBatch:
    """One log entry, with inputs and targets as the engine takes them."""
    if payload[:1] == _MAGIC:
        return _decode_binary(position, payload)
    data = msgpack.unpackb(payload)
    inputs = _rows(data["x"], data.get("w"))
    if "y" in data:
        targets: list[np.ndarray | None] = list(_rows(data["y"], data.get("t")))
    else:
        targets = [None] * len(inputs)
    epoch = data.get("e")
    base = data.get("b")
    times: list[float | None] | None = None
    if "s" in data:
        times = [None if t != t else float(t) for t in np.frombuffer(data["s"], dtype="<f8").tolist()]
    return LoggedBatch(
        position,
        None if epoch is None else int(epoch),
        None if base is None else str(base),
        inputs,
        targets,
        times,
    )


def _decode_binary(position: str, payload: bytes) -> LoggedBatch:
    _, version, epoch, n, wx, wy, flags, size = _HEAD.unpack_from(payload)
    if version != _FORMAT:
        raise ValueError(f"log payload format {version} is not known")
    at = _HEAD.size + size
    base = payload[_HEAD.size : at].decode()
    width = wx + wy + (1 if flags & _TIMES else 0)
    matrix = np.frombuffer(payload, dtype="<f8", offset=at).reshape(n, width).astype(np.float64)
    inputs = list(matrix[:, :wx])
    targets: list[np.ndarray | None] = list(matrix[:, wx : wx + wy]) if wy else [None] * n
    times: list[float | None] | None = None
    if flags & _TIMES:
        times = [None if t != t else float(t) for t in matrix[:, -1].tolist()]
    return LoggedBatch(position, epoch, base, inputs, targets, times)


def _rows(raw: bytes | list[list[float]], width: int | None) -> list[np.ndarray]:
    if isinstance(raw, list):  # the first format: nested lists of floats
        return [np.asarray(row, dtype=np.float64) for row in raw]
    assert width is not None
    return list(np.frombuffer(raw, dtype="<f8").reshape(-1, width).astype(np.float64))


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    apply: list[LoggedBatch]
    """The entries to apply, in order."""
    head: str
    """Position of the last entry applied (the checkpoint's own position if none)."""
    skipped: int
    """Entries left out: a stale writer's, or ones their writer never applied."""


def plan_replay(checkpoint_epoch: int, checkpoint_position: str, tail: Sequence[LoggedBatch]) -> ReplayPlan:
    """The chain of ``tail`` entries that continues the checkpoint's state (see the module docstring)."""
    chain: list[LoggedBatch] = []
    heads = [checkpoint_position]  # heads[i]: position after applying chain[:i]
    epoch = checkpoint_epoch
    skipped = 0
    for entry in tail:
        if entry.epoch is not None and entry.epoch < epoch:
            skipped += 1  # a process that lost ownership kept appending
            continue
        if entry.base is not None and entry.base != heads[-1]:
            if entry.base not in heads:
                skipped += 1  # based on entries outside this chain: not this owner's history
                continue
            keep = len(heads) - 1 - heads[::-1].index(entry.base)
            skipped += len(chain) - keep  # entries after its base were never applied by its writer
            del chain[keep:]
            del heads[keep + 1 :]
        chain.append(entry)
        heads.append(entry.position)
        if entry.epoch is not None:
            epoch = entry.epoch
    return ReplayPlan(chain, heads[-1], skipped)
