"""The durability log's payloads: a batch's observations of one stream, replayable after a crash.

Payloads are MessagePack of ``{"e": epoch, "b": base, "x": rows, "y": rows}`` (``y`` absent for ``ar``
streams, whose rows are the arriving values). Replay applies them through the same engine call as live
traffic, so a restored stream ends in exactly the state an uninterrupted run would have.

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

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from .ingest import IngestBatch

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


def encode_batches(batches: Sequence[IngestBatch], epoch: int, bases: dict[str, str]) -> dict[str, bytes]:
    """One payload per stream for the merged batches, observations in apply order.

    ``bases[stream]``: the position of the last entry applied to that stream's state ("" if none).
    """
    xs: dict[str, list[list[float]]] = {}
    ys: dict[str, list[list[float]]] = {}
    for batch in batches:
        for stream, x, y in zip(batch.stream_ids, batch.inputs, batch.targets, strict=True):
            xs.setdefault(stream, []).append(x.tolist())
            if y is not None:
                ys.setdefault(stream, []).append(y.tolist())
    return {
        stream: msgpack.packb(
            {"e": epoch, "b": bases.get(stream, ""), "x": rows, **({"y": ys[stream]} if stream in ys else {})}
        )
        for stream, rows in xs.items()
    }


def decode_payload(position: str, payload: bytes) -> LoggedBatch:
    """One log entry, with inputs and targets as the engine takes them."""
    data = msgpack.unpackb(payload)
    inputs = [np.asarray(row, dtype=np.float64) for row in data["x"]]
    if "y" in data:
        targets: list[np.ndarray | None] = [np.asarray(row, dtype=np.float64) for row in data["y"]]
    else:
        targets = [None] * len(inputs)
    epoch = data.get("e")
    base = data.get("b")
    return LoggedBatch(
        position, None if epoch is None else int(epoch), None if base is None else str(base), inputs, targets
    )


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
