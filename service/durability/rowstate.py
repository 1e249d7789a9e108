"""Streams' state as checkpoint blobs and back, many at a time: a `RowCodec` per pool, and the generic
safetensors path for what it cannot take (a bfloat16 pool, a blob written another way or by an older
format), so a checkpoint pass or a restore of thousands of streams costs a few microseconds per stream.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from trackin.models.layout import KINDS, PackedState
from trackin.service.store import FORMAT_VERSION, CorruptCheckpoint, decode_state, encode_state
from trackin.service.store.codec import FORMAT_KEY
from trackin.service.store.rowcodec import RowCodec, rows_from_tensors

__all__ = ["RowBlobs"]


class RowBlobs:
    """Encodes and decodes the rows of pools' streams; one `RowCodec` per pool layout, made on first use."""

    def __init__(self) -> None:
        # weak keys: a pool the engine drops takes its codec with it (the codec holds no buffers)
        self._codecs: weakref.WeakKeyDictionary[PackedState, RowCodec | None] = weakref.WeakKeyDictionary()

    def codec(self, packed: PackedState) -> RowCodec | None:
        if packed not in self._codecs:
            self._codecs[packed] = RowCodec(packed) if RowCodec.supports(packed) else None
        return self._codecs[packed]

    def encode(self, packed: PackedState, rows: Sequence[Tensor]) -> list[bytes]:
        """One checkpoint blob per row of ``rows`` (a pool's ``[float, int, bool]`` blocks on the CPU)."""
        codec = self.codec(packed)
        if codec is not None:
            return codec.encode(rows)
        views = packed.views_of(rows)
        count = int(rows[0].shape[0])
        return [encode_state({key: view[i] for key, view in views.items()}, {})[0] for i in range(count)]

    def decode(
        self,
        packed: PackedState,
        stream_ids: Sequence[str],
        blobs: Sequence[bytes],
        metas: Sequence[Mapping[str, Any]],
    ) -> tuple[list[str], list[Tensor], dict[str, CorruptCheckpoint | ValueError | KeyError]]:
        """The streams whose blobs decode to rows of ``packed``, in order, and those rows stacked; the
        others' errors by stream (`CorruptCheckpoint`, or ``KeyError``/``ValueError``: does not fit)."""
        codec = self.codec(packed)
        rows: list[list[Tensor]] = []
        ids: list[str] = []
        taken: list[int] = []
        if codec is not None:
            current = [i for i, meta in enumerate(metas) if meta.get(FORMAT_KEY) == FORMAT_VERSION]
            block, picked = codec.decode([blobs[i] for i in current])
            taken = [current[i] for i in picked]
            if taken:
                rows.append(block)
                ids.extend(stream_ids[i] for i in taken)
        errors: dict[str, CorruptCheckpoint | ValueError | KeyError] = {}
        done = set(taken)
        for i, stream_id in enumerate(stream_ids):
            if i in done:
                continue
            try:
                row = rows_from_tensors(packed, decode_state(stream_id, blobs[i], metas[i]))
            except (CorruptCheckpoint, KeyError, ValueError) as exc:
                errors[stream_id] = exc
                continue
            rows.append(row)
            ids.append(stream_id)
        if not rows:
            return [], [], errors
        return ids, [torch.cat([r[kind] for r in rows]) for kind in KINDS], errors
