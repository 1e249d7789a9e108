"""Checkpoints of many streams at once: a pool's rows as safetensors blobs, and back, without a per-key step.

A pool keeps each stream as one row of three buffers (float, int64, bool; `trackin.models.layout`), each
state key a column range of one of them. Laid out in that order (the float keys, then the int ones, then
the bool ones, each at its column offset), a stream's safetensors data section *is* the used part of its
three rows, and the header (names, dtypes, shapes, offsets) is the same for every stream of the pool. So
`RowCodec.encode` writes one header and one copy of each row, and `RowCodec.decode` checks the header with
one bytes comparison and stacks the data of a thousand streams with one numpy copy. The blobs are ordinary
safetensors: `trackin.service.store.codec.decode_state` reads them like any other, and a blob this layout
did not write (an older format, another key order, a truncated one) is simply not taken by `decode`, which
leaves it to that generic path (and its `CorruptCheckpoint`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from trackin.models.layout import KINDS, PackedState

__all__ = ["RowCodec", "rows_from_tensors"]

_DTYPES: dict[torch.dtype, tuple[str, np.dtype[Any]]] = {
    torch.float32: ("F32", np.dtype("<f4")),
    torch.float64: ("F64", np.dtype("<f8")),
    torch.int64: ("I64", np.dtype("<i8")),
    torch.bool: ("BOOL", np.dtype("bool")),
}


class RowCodec:
    """The safetensors form of one pool layout's rows (see the module docstring)."""

    def __init__(self, packed: PackedState) -> None:
        self.widths = packed.widths
        self._numpy = [_DTYPES[dtype][1] for dtype in packed.dtypes]
        # used columns of each buffer (the rest is alignment padding), and where each buffer's data starts
        self._used = [max((c.stop for c in packed.columns.values() if c.kind == k), default=0) for k in KINDS]
        sizes = [u * d.itemsize for u, d in zip(self._used, self._numpy, strict=True)]
        self._starts = [0, sizes[0], sizes[0] + sizes[1]]
        self.data_bytes = sum(sizes)
        header: dict[str, object] = {}
        for key, c in packed.columns.items():
            item = self._numpy[c.kind].itemsize
            start = self._starts[c.kind]
            header[key] = {
                "dtype": _DTYPES[packed.dtypes[c.kind]][0],
                "shape": list(c.shape),
                "data_offsets": [start + c.start * item, start + c.stop * item],
            }
        text = orjson.dumps(header)
        text += b" " * (-len(text) % 8)  # padded like safetensors' own writer
        self.header = struct.pack("<Q", len(text)) + text

    @staticmethod
    def supports(packed: PackedState) -> bool:
        """Whether numpy has the layout's dtypes (not bfloat16: such pools take the generic path)."""
        return all(dtype in _DTYPES for dtype in packed.dtypes)

    def encode(self, rows: Sequence[Tensor]) -> list[bytes]:
        """One blob per row of ``rows`` (``[float, int, bool]`` blocks ``[n, width]`` on the CPU). Each
        row's data is copied once into a block laid out as the blobs (header, then the used columns), and
        once more into its ``bytes``: a stream of hundreds of MB is not copied four times."""
        header = self.header
        out = np.empty((rows[0].shape[0], len(header) + self.data_bytes), dtype=np.uint8)
        out[:, : len(header)] = np.frombuffer(header, dtype=np.uint8)
        start = len(header)
        for block, used, dtype in zip(rows, self._used, self._numpy, strict=True):
            part = block[:, :used].numpy().astype(dtype, copy=False)  # a view unless the dtype differs
            stop = start + used * dtype.itemsize
            out[:, start:stop] = part.view(np.uint8)
            start = stop
        return list(map(bytes, out))

    def decode(self, blobs: Sequence[bytes]) -> tuple[list[Tensor], list[int]]:
        """The rows of those ``blobs`` this layout wrote (stacked, full width with zero padding) and their
        indices in ``blobs``; the others are left to the generic decoder."""
        header, size = self.header, len(self.header) + self.data_bytes
        taken = [i for i, blob in enumerate(blobs) if len(blob) == size and blob.startswith(header)]
        skip = len(header)
        data = np.frombuffer(b"".join(blobs[i][skip:] for i in taken), dtype=np.uint8)
        data = data.reshape(len(taken), self.data_bytes)
        rows = []
        for kind in KINDS:
            block = np.zeros((len(taken), self.widths[kind]), dtype=self._numpy[kind])
            stop = self._starts[kind] + self._used[kind] * self._numpy[kind].itemsize
            block[:, : self._used[kind]] = data[:, self._starts[kind] : stop].view(self._numpy[kind])
            rows.append(torch.from_numpy(block))
        return rows, taken


def rows_from_tensors(packed: PackedState, tensors: Mapping[str, Tensor]) -> list[Tensor]:
    """One stream's state given key by key (a checkpoint any other way written) as ``[1, width]`` rows;
    ``KeyError`` for a missing key and ``ValueError`` for a wrong shape, like `StreamPool.load`."""
    missing = set(packed.columns) - set(tensors)
    if missing:
        raise KeyError(f"state lacks {sorted(missing)}")
    rows, views = packed.blank()
    for key, view in views.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != tuple(view.shape[1:]):
            raise ValueError(f"{key}: shape {tuple(tensor.shape)}, expected {tuple(view.shape[1:])}")
        view[0].copy_(tensor)
    return [row.cpu() for row in rows]
