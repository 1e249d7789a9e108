"""Packed stream state: every per-stream quantity is a named column range of one of three stacked buffers.

A pool's state is three 2-D buffers, one per dtype kind (the pool's float dtype, int64, bool), each
``[capacity, width]`` with one row per slot. Every state key (``param/weight0``, ``opt/step``, ...) is a view
of a column range reshaped to ``[capacity, *shape]``, so callers keep a dict of named tensors while a round
of learning gathers and scatters each buffer with one indexed copy. Keys are laid out in the order given,
so related keys (all parameters, one optimizer buffer over all parameters, the figures) form one flat
``[rows, width]`` slice of a gathered block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FLOAT", "INT", "KINDS", "Column", "Entries", "PackedState", "row_nbytes"]

FLOAT, INT, BOOL = 0, 1, 2
KINDS = (FLOAT, INT, BOOL)
"""Buffer kinds: the pool's float dtype, ``torch.int64`` and ``torch.bool``."""

_ALIGN_BYTES = 16
"""Row widths of the float and int buffers are padded to this many bytes, so a gathered block can be
scattered back through a ``complex128`` view: one element per 16 bytes instead of per value (index_copy_
on the CPU costs per element, and this makes the scatter about twice as fast)."""


@dataclass(frozen=True, slots=True)
class Column:
    """Where one key lives: buffer ``kind``, columns ``start:stop``, per-stream ``shape``."""

    kind: int
    start: int
    stop: int
    shape: tuple[int, ...]


Entries = Sequence[tuple[str, tuple[int, ...], int]]


def _columns(entries: Entries, dtypes: Sequence[torch.dtype]) -> tuple[dict[str, Column], tuple[int, ...]]:
    """Each key's columns, and each buffer's padded row width."""
    widths = [0, 0, 0]
    columns: dict[str, Column] = {}
    for key, shape, kind in entries:
        size = math.prod(shape)
        columns[key] = Column(kind, widths[kind], widths[kind] + size, shape)
        widths[kind] += size
    for kind in (FLOAT, INT):
        per = max(1, _ALIGN_BYTES // dtypes[kind].itemsize)
        widths[kind] = -(-max(widths[kind], 1) // per) * per
    return columns, tuple(widths)


def row_nbytes(entries: Entries, dtype: torch.dtype) -> int:
    """Bytes of one slot (one row of each buffer) of a state laid out from ``entries``, allocating nothing."""
    dtypes = (dtype, torch.int64, torch.bool)
    _, widths = _columns(entries, dtypes)
    return sum(w * d.itemsize for w, d in zip(widths, dtypes, strict=True))


class PackedState:
    """Stacked per-stream buffers and the named views into them.

    Args:
        entries: ``(key, shape, kind)`` per state key, in layout order.
        dtype: the float kind's dtype.
        device: where the buffers live.
        capacity: initial rows.
    """

    def __init__(
        self,
        entries: Entries,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int,
    ) -> None:
        self.dtypes = (dtype, torch.int64, torch.bool)
        self.device = device
        self.columns, self.widths = _columns(entries, self.dtypes)
        self._fast_scatter = device.type in ("cpu", "cuda")
        self.capacity = 0
        self.buffers: list[Tensor] = [self._empty(0, kind) for kind in KINDS]
        self.views: dict[str, Tensor] = {}
        self._indices: dict[tuple[str, ...], Tensor] = {}
        self.grow(capacity)

    def _empty(self, rows: int, kind: int) -> Tensor:
        return torch.zeros((rows, self.widths[kind]), dtype=self.dtypes[kind], device=self.device)

    def views_of(self, buffers: Sequence[Tensor]) -> dict[str, Tensor]:
        """Named views ``[rows, *shape]`` of buffers laid out like this state's (a gathered block too)."""
        views = {}
        for key, c in self.columns.items():
            buf = buffers[c.kind]
            views[key] = (
                buf[:, c.start] if c.shape == () else buf[:, c.start : c.stop].view(buf.shape[0], *c.shape)
            )
        return views

    def grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` rows, keeping the existing rows.

        The new rows are left unwritten: a slot's row is written whole when a stream takes it (its
        template, or its restored state), a freed slot keeps its last stream's state anyway, and reads of
        many rows select the used ones (``used_mask``). Zeroing them cost an eager restore of 100,000
        streams a tenth of its time: every doubling's whole buffer touched (page faults and a memset), the
        intermediate ones included, where now only the rows copied and the rows taken are."""
        new = [
            torch.empty((capacity, width), dtype=dtype, device=self.device)
            for width, dtype in zip(self.widths, self.dtypes, strict=True)
        ]
        for old, buf in zip(self.buffers, new, strict=True):
            buf[: self.capacity].copy_(old)
        self.buffers = new
        self.views = self.views_of(new)
        self.capacity = capacity

    def blank(self) -> tuple[list[Tensor], dict[str, Tensor]]:
        """One zero row of each buffer (not part of the state) and its named views, to build a template."""
        rows = [self._empty(1, kind) for kind in KINDS]
        return rows, self.views_of(rows)

    def write_row(self, slot: int, rows: Sequence[Tensor]) -> None:
        """Overwrite one slot with ``[1, width]`` rows of each buffer."""
        for buf, row in zip(self.buffers, rows, strict=True):
            buf[slot].copy_(row[0])

    def read_row(self, slot: int) -> list[Tensor]:
        """One slot's ``[1, width]`` rows (copies)."""
        return [buf[slot : slot + 1].clone() for buf in self.buffers]

    def read_columns(self, slots: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """Scalar keys ``names`` (all of one kind) of rows ``slots`` on the host, ``[len(slots),
        len(names)]`` in the buffer's dtype. Only those entries are gathered (a big model's row is
        megabytes), on the device, with one copy to the host; a CPU buffer is read through NumPy (a torch
        op costs about 10 us, more than this whole read)."""
        index = self._indices.get(names)
        if index is None:
            starts = [self.columns[k].start for k in names]
            index = self._indices[names] = torch.tensor(starts, dtype=torch.int64, device=self.device)
        buffer = self.buffers[self.columns[names[0]].kind]
        if self.device.type == "cpu":
            return np.asarray(buffer.numpy()[slots[:, None], index.numpy()])
        rows = torch.as_tensor(slots, device=self.device).unsqueeze(1)
        return buffer[rows, index].cpu().numpy()

    def gather(self, slots: Tensor, kind: int) -> Tensor:
        """Rows ``slots`` of one buffer: ``[len(slots), width]`` (a copy)."""
        return self.buffers[kind].index_select(0, slots)

    def scatter(self, slots: Tensor, kind: int, block: Tensor) -> None:
        """Write a gathered (and updated) block back to rows ``slots``; ``slots`` must be distinct."""
        buf = self.buffers[kind]
        if self._fast_scatter and kind != BOOL and block.is_contiguous():
            buf.view(torch.complex128).index_copy_(0, slots, block.view(torch.complex128))
        else:
            buf.index_copy_(0, slots, block)

    def nbytes(self) -> int:
        """Bytes of the buffers (all slots, used or free, padding included)."""
        return sum(b.numel() * b.element_size() for b in self.buffers)
