"""The durability log's payloads: a batch's observations of one stream, replayable after a crash.

Payloads are MessagePack of ``{"e": epoch, "b": base, "x": X, "y": Y}``: ``X`` and ``Y`` are the
stream's rows of inputs and targets in apply order as little-endian float64 bytes, C order, ``[n, width]``
with ``n = len(X) // (8 * width)`` and the widths in ``"w"`` and ``"t"`` (``y`` absent for ``ar`` streams,
whose rows are the arriving values). Raw bytes keep every value exact and cost one copy per stream
instead of a float object per value. Replay applies them through the same engine call as live traffic, so
a restored stream ends in exactly the state an uninterrupted run would have.

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
    # The usual batch has one width per side: sort the stacked rows by stream once, then every stream's
    # rows are one contiguous slice, and its bytes one copy.
    xs = _sorted_rows(inputs, order)
    ys = _sorted_rows(targets, order) if all(y is not None for y in targets) else None
    rows_of = order.tolist()
    out: dict[str, bytes] = {}
    start = 0
    for stream, end in zip(codes, ends, strict=True):
        rows = rows_of[start:end]
        x = xs[start:end] if xs is not None else _raw(np.stack([inputs[i] for i in rows]))
        payload: dict[str, object] = {
            "e": epoch,
            "b": bases.get(stream, ""),
            "w": x.shape[1],
            "x": x.tobytes(),
        }
        if times is not None:
            payload["s"] = np.ascontiguousarray(times[rows]).tobytes()
        if targets[rows[0]] is not None:
            y = ys[start:end] if ys is not None else _raw(np.stack([targets[i] for i in rows]))  # type: ignore[misc]
            payload["t"] = y.shape[1]
            payload["y"] = y.tobytes()
        out[stream] = msgpack.packb(payload)
        start = end
    return out


def _sorted_rows(rows: Sequence[np.ndarray | None], order: np.ndarray) -> np.ndarray | None:
    """All rows as one little-endian float64 matrix in ``order``, when they share a width, else None."""
    stacked = _stacked(rows)
    return None if stacked is None else _raw(stacked[order])


def _stacked(rows: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """All rows as one matrix when they share a width (the usual batch), else None."""
    try:
        return np.stack(rows)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def _raw(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype="<f8")


def decode_payload(position: str, payload: bytes) -> LoggedBatch:
    """One log entry, with inputs and targets as the engine takes them."""
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
