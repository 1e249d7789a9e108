"""The durability log's payloads: a batch's observations of one stream, replayable after a crash.

Payloads are MessagePack of ``{"x": rows, "y": rows}`` (``y`` absent for ``ar`` streams, whose rows are the
arriving values). Replay applies them through the same engine call as live traffic, so a restored stream
ends in exactly the state an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from .ingest import IngestBatch

__all__ = ["decode_payload", "encode_batches"]


def encode_batches(batches: Sequence[IngestBatch]) -> dict[str, bytes]:
    """One payload per stream for the merged batches, observations in apply order."""
    xs: dict[str, list[list[float]]] = {}
    ys: dict[str, list[list[float]]] = {}
    for batch in batches:
        for stream, x, y in zip(batch.stream_ids, batch.inputs, batch.targets, strict=True):
            xs.setdefault(stream, []).append(x.tolist())
            if y is not None:
                ys.setdefault(stream, []).append(y.tolist())
    return {
        stream: msgpack.packb({"x": rows, **({"y": ys[stream]} if stream in ys else {})})
        for stream, rows in xs.items()
    }


def decode_payload(payload: bytes) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Inputs and targets of one payload, as the engine takes them."""
    data = msgpack.unpackb(payload)
    inputs = [np.asarray(row, dtype=np.float64) for row in data["x"]]
    if "y" in data:
        targets: list[np.ndarray | None] = [np.asarray(row, dtype=np.float64) for row in data["y"]]
    else:
        targets = [None] * len(inputs)
    return inputs, targets
