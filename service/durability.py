"""The durability log's payloads: a batch's observations of one stream, replayable after a crash.

Payloads are MessagePack of ``{"e": epoch, "x": rows, "y": rows}`` (``y`` absent for ``ar`` streams, whose
rows are the arriving values). Replay applies them through the same engine call as live traffic, so a
restored stream ends in exactly the state an uninterrupted run would have.

``e`` is the owner epoch of the process that logged the batch. Appends are not fenced by the store, so a
stale process (one a newer process took over from) can still add entries to a stream's log; replay skips
entries older than the checkpoint it starts from, which the new owner writes with its epoch as soon as it
has restored the stream. Payloads without ``e`` (none are written any more) replay unconditionally.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from .ingest import IngestBatch

__all__ = ["decode_payload", "encode_batches"]


def encode_batches(batches: Sequence[IngestBatch], epoch: int) -> dict[str, bytes]:
    """One payload per stream for the merged batches, observations in apply order, stamped with ``epoch``."""
    xs: dict[str, list[list[float]]] = {}
    ys: dict[str, list[list[float]]] = {}
    for batch in batches:
        for stream, x, y in zip(batch.stream_ids, batch.inputs, batch.targets, strict=True):
            xs.setdefault(stream, []).append(x.tolist())
            if y is not None:
                ys.setdefault(stream, []).append(y.tolist())
    return {
        stream: msgpack.packb({"e": epoch, "x": rows, **({"y": ys[stream]} if stream in ys else {})})
        for stream, rows in xs.items()
    }


def decode_payload(payload: bytes) -> tuple[int | None, list[np.ndarray], list[np.ndarray | None]]:
    """The logging process's epoch (None if not recorded), then inputs and targets for the engine."""
    data = msgpack.unpackb(payload)
    epoch = data.get("e")
    inputs = [np.asarray(row, dtype=np.float64) for row in data["x"]]
    if "y" in data:
        targets: list[np.ndarray | None] = [np.asarray(row, dtype=np.float64) for row in data["y"]]
    else:
        targets = [None] * len(inputs)
    return (int(epoch) if epoch is not None else None), inputs, targets
