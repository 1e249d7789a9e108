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

import itertools
import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from trackin.service.domain.ingest import IngestBatch

__all__ = [
    "GroupEntry",
    "LoggedBatch",
    "ReplayPlan",
    "decode_group",
    "decode_payload",
    "encode_batches",
    "encode_group",
    "plan_replay",
]


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


# ----- the batch log (group commit): one entry per engine batch --------------------------------------------
#
# Header ``<cBqIIHHBII``: 0xC1, format 3, the owner epoch, observations ``n``, distinct streams ``m``, the
# input width ``w``, the target width ``t`` (0 for series), flags (1: a times column), the byte lengths
# of the ids and of the bases; then the stream id of every observation joined by newlines (a newline is
# not in the id alphabet), the base of each distinct stream in order of first appearance (newlines
# again), and one little-endian float64 matrix ``[n, w + t (+ 1)]`` in apply order. Encoding costs a
# join, a concatenation and a copy per batch, with no Python work per observation or per stream beyond
# reading the bases; a batch whose streams differ in widths is one entry per width class.
#
# Format 4, for entries whose streams all keep float32 state (the default): the same, but inputs and
# targets as one little-endian float32 matrix ``[n, w + t]``, then the times (if flagged) as float64
# ``[n]``. The engine casts what it is given to the stream's dtype before any arithmetic, so a float32
# stream steps on exactly the same values from the narrowed log: replay stays exact, and the entry is
# 40 % smaller (the store's write, its memory and its disk). Times stay float64 (epoch seconds need it).
# A reader of format 3 only refuses format 4 by its number, as any unknown format.

_GROUP = 3
_GROUP_NARROW = 4
_GROUP_HEAD = struct.Struct("<cBqIIHHBII")
_DTYPE = operator.attrgetter("dtype")


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One batch-log entry to append: its payload and the distinct streams it holds."""

    payload: bytes
    streams: list[str]


def encode_group(
    batches: Sequence[IngestBatch], epoch: int, bases: Mapping[str, str], *, float32: bool = True
) -> list[GroupEntry]:
    """The merged batches as batch-log entries (one, unless their streams differ in widths).

    ``bases[stream]``: the position of the last entry applied to that stream's state ("" if none);
    ``float32``: format 4 where every stream keeps float32 state (else always format 3)."""
    batches = [b for b in batches if len(b)]
    narrow = float32 and _all_float32(batches)
    if batches and all(b.x is not None for b in batches):
        kinds = {(b.x.shape[1], None if b.y is None else b.y.shape[1]) for b in batches}  # type: ignore[union-attr]
        if len(kinds) == 1:
            xs = [b.x for b in batches]
            ys = None if batches[0].y is None else [b.y for b in batches]
            ts = None
            if any(b.t is not None for b in batches):
                ts = [b.t if b.t is not None else np.full(len(b), np.nan) for b in batches]
            if len(batches) == 1:
                ids, streams = batches[0].stream_ids, list(batches[0].streams)
            else:
                ids = [*itertools.chain(*(b.stream_ids for b in batches))]
                streams = list(dict.fromkeys(itertools.chain(*(b.streams for b in batches))))
            return [_group_entry(ids, streams, xs, ys, ts, epoch, bases, narrow)]  # type: ignore[arg-type]
    # Items walked one by one (mixed widths): one entry per (input, target) width class.
    classes: dict[tuple[int, int], tuple[list[str], list[np.ndarray], list[np.ndarray], list[float]]] = {}
    timed = any(b.times is not None for b in batches)
    for b in batches:
        times = b.times or [None] * len(b)
        for stream, x, y, t in zip(b.stream_ids, b.inputs, b.targets, times, strict=True):
            group = classes.setdefault((len(x), -1 if y is None else len(y)), ([], [], [], []))
            group[0].append(stream)
            group[1].append(x)
            if y is not None:
                group[2].append(y)
            group[3].append(np.nan if t is None else t)
    out = []
    for (_, wy), (class_ids, class_xs, class_ys, class_ts) in classes.items():
        out.append(
            _group_entry(
                class_ids,
                list(dict.fromkeys(class_ids)),
                [np.stack(class_xs)],
                [np.stack(class_ys)] if wy >= 0 else None,
                [np.asarray(class_ts, dtype=np.float64)] if timed else None,
                epoch,
                bases,
                narrow,
            )
        )
    return out


def _group_entry(
    ids: list[str],
    streams: list[str],
    xs: list[np.ndarray],
    ys: list[np.ndarray] | None,
    ts: list[np.ndarray] | None,
    epoch: int,
    bases: Mapping[str, str],
    narrow: bool = False,
) -> GroupEntry:
    """``streams``: the distinct ``ids`` in order of first arrival (the order `decode_group` reads);
    ``narrow``: every one keeps float32 state (format 4)."""
    columns = [np.concatenate(xs) if len(xs) > 1 else xs[0]]
    wx = columns[0].shape[1]
    wy = 0
    if ys is not None:
        columns.append(np.concatenate(ys) if len(ys) > 1 else ys[0])
        wy = columns[1].shape[1]
    times = None if ts is None else (np.concatenate(ts) if len(ts) > 1 else ts[0])
    raw_ids = "\n".join(ids).encode()
    raw_bases = "\n".join(map(bases.get, streams, itertools.repeat(""))).encode()  # type: ignore[arg-type]
    flags = _TIMES if times is not None else 0
    version = _GROUP_NARROW if narrow else _GROUP
    head = _GROUP_HEAD.pack(
        _MAGIC, version, epoch, len(ids), len(streams), wx, wy, flags, len(raw_ids), len(raw_bases)
    )
    if narrow:
        values = np.concatenate(columns, axis=1, dtype="<f4") if len(columns) > 1 else columns[0]
        body = [np.ascontiguousarray(values, dtype="<f4").tobytes()]
        if times is not None:
            body.append(np.ascontiguousarray(times, dtype="<f8").tobytes())
    else:
        if times is not None:
            columns.append(times[:, None])
        matrix = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
        body = [np.ascontiguousarray(matrix, dtype="<f8").tobytes()]
    return GroupEntry(b"".join((head, raw_ids, raw_bases, *body)), streams)


def _all_float32(batches: Sequence[IngestBatch]) -> bool:
    """Every stream of the batches keeps float32 state (one attribute read per stream, in C)."""
    return all(set(map(_DTYPE, b.specs.values())) == {"float32"} for b in batches)


def decode_group(position: str, payload: bytes) -> dict[str, LoggedBatch]:
    """A batch-log entry as each of its streams' share, in the form per-stream entries decode to."""
    _, version, epoch, n, m, wx, wy, flags, size_ids, size_bases = _GROUP_HEAD.unpack_from(payload)
    if version not in (_GROUP, _GROUP_NARROW):
        raise ValueError(f"batch log payload format {version} is not known")
    at = _GROUP_HEAD.size
    ids = payload[at : at + size_ids].decode().split("\n")
    at += size_ids
    bases = payload[at : at + size_bases].decode().split("\n")
    at += size_bases
    width = wx + wy + (1 if flags & _TIMES else 0)
    if version == _GROUP:
        matrix = np.frombuffer(payload, dtype="<f8", offset=at).reshape(n, width).astype(np.float64)
    else:  # float32 inputs and targets, then float64 times
        matrix = np.empty((n, width), dtype=np.float64)
        matrix[:, : wx + wy] = np.frombuffer(payload, dtype="<f4", offset=at, count=n * (wx + wy)).reshape(
            n, wx + wy
        )
        if flags & _TIMES:
            matrix[:, -1] = np.frombuffer(payload, dtype="<f8", offset=at + 4 * n * (wx + wy), count=n)
    if len(ids) != n or len(bases) != m:
        raise ValueError(f"batch log entry {position}: {len(ids)} ids for {n} rows, {len(bases)} bases")
    rows: dict[str, list[int]] = {}
    for i, stream in enumerate(ids):
        rows.setdefault(stream, []).append(i)
    if list(rows) != [] and len(rows) != m:
        raise ValueError(f"batch log entry {position}: {len(rows)} streams for {m} bases")
    out = {}
    for (stream, index), base in zip(rows.items(), bases, strict=True):
        part = matrix[index]
        targets: list[np.ndarray | None] = list(part[:, wx : wx + wy]) if wy else [None] * len(index)
        times = None
        if flags & _TIMES:
            times = [None if t != t else float(t) for t in part[:, -1].tolist()]
        out[stream] = LoggedBatch(position, epoch, base, list(part[:, :wx]), targets, times)
    return out


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
    if not tail:  # a stream checkpointed with all it applied: the usual case of a restore
        return ReplayPlan([], checkpoint_position, 0)
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
