"""The multi-stream engine: stream ids mapped to slots of pools, one vectorised step per pool and batch.

The id -> (pool, slot) mapping is the only per-stream Python object, and a small one: each id maps to one
integer, ``spec entry << 32 | slot``, where the entry is the stream's spec (equal specs share one entry and
one spec object) and its pool. Everything a stream learns lives in its pool's stacked tensors. A batch may
mix pools: items are grouped by pool (a loop over pools, never over streams) and each pool observes its share
in one call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from trackin.models.figures import FleetFigures, StreamFigures
from trackin.models.kernels import Kernels
from trackin.models.memory import release_memory
from trackin.models.pool import HostResult, StreamPool, initial_capacity, slot_bytes
from trackin.models.specs import ARModel, StreamSpec, TrackModel

__all__ = [
    "Engine",
    "FleetFigures",
    "ItemResult",
    "MemoryBudgetError",
    "Outcomes",
    "StreamFigures",
    "StreamLocation",
    "UnknownStreamError",
    "resolve_device",
]


class UnknownStreamError(KeyError):
    """No resident stream has this id."""


class MemoryBudgetError(MemoryError):
    """Adding a stream would take the engine's state over its memory budget (nothing was allocated)."""

    def __init__(self, needed: int, used: int, budget: int) -> None:
        super().__init__(
            f"a new stream of this spec needs {needed:,} more bytes; {used:,} of the budget of {budget:,} "
            "bytes are in use"
        )
        self.needed, self.used, self.budget = needed, used, budget


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass(frozen=True, slots=True)
class StreamLocation:
    pool: StreamPool
    slot: int
    spec: StreamSpec


class ItemResult(NamedTuple):
    """One observation's outcome, as plain Python values for the wire.

    A named tuple, not a frozen dataclass: the ids API builds one per observation, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs about 1 us of the 2.5 us an
    observation costs there at batch 1,024; a tuple's costs a fifth of that."""

    step: int
    prediction: list[float] | None
    loss: float | None
    applied: bool
    warming: bool
    nonfinite: bool
    drift: bool
    forecast: list[float] | None


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Per-observation outcomes as host arrays, in input order: what `Engine.observe_arrays` returns, with
    no object per item (the service serialises these columns directly)."""

    steps: np.ndarray  # int64 [n]: the stream's step count after this observation
    predictions: np.ndarray  # float [n, out], made before learning; NaN rows: none (warming ar streams)
    losses: np.ndarray  # float [n]; NaN where nothing was scored
    applied: np.ndarray  # bool [n]: one optimizer step was taken
    warming: np.ndarray  # bool [n]
    nonfinite: np.ndarray  # bool [n]
    drift: np.ndarray  # bool [n]
    forecasts: np.ndarray | None  # float [n, dim]: next forecast of series streams (NaN rows: none)

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def __iter__(self) -> Iterator[ItemResult]:
        """Item by item, as ``ItemResult``s (for callers that walk items; builds objects)."""
        return iter(self.items())

    def __getitem__(self, index: int) -> ItemResult:
        return self.take(index, index + 1 if index != -1 else None).items()[0]

    @classmethod
    def host(cls, outcome: HostResult) -> Outcomes:
        """A pool's result already on NumPy (`StreamPool.observe_host`)."""
        return cls(
            outcome.steps,
            outcome.predictions,
            outcome.losses,
            outcome.applied,
            outcome.warming,
            outcome.nonfinite,
            outcome.drift,
            outcome.forecasts,
        )

    @classmethod
    def empty(cls, n: int, width: int, dtype: np.dtype[Any], series: bool) -> Outcomes:
        nan = np.full((n, width), np.nan, dtype)
        false = np.zeros(n, bool)
        forecasts = nan.copy() if series else None
        return cls(np.zeros(n, np.int64), nan, np.full(n, np.nan, dtype), false, false.copy(), false.copy(),
                   false.copy(), forecasts)  # fmt: skip

    def put(self, members: np.ndarray, part: Outcomes) -> None:
        """Write ``part``'s rows at positions ``members``."""
        self.steps[members] = part.steps
        self.predictions[members] = part.predictions
        self.losses[members] = part.losses
        self.applied[members] = part.applied
        self.warming[members] = part.warming
        self.nonfinite[members] = part.nonfinite
        self.drift[members] = part.drift
        if self.forecasts is not None and part.forecasts is not None:
            self.forecasts[members] = part.forecasts

    def take(self, start: int, stop: int | None) -> Outcomes:
        """Rows ``start:stop`` (views)."""
        f = self.forecasts
        return Outcomes(
            self.steps[start:stop],
            self.predictions[start:stop],
            self.losses[start:stop],
            self.applied[start:stop],
            self.warming[start:stop],
            self.nonfinite[start:stop],
            self.drift[start:stop],
            None if f is None else f[start:stop],
        )

    def items(self) -> list[ItemResult]:
        """One ``ItemResult`` per observation (for the few callers that want objects)."""
        n = len(self)
        forecasts = _host_rows(self.forecasts) if self.forecasts is not None else [None] * n
        columns = (
            self.steps.tolist(),
            _host_rows(self.predictions),
            _host_values(self.losses),
            self.applied.tolist(),
            self.warming.tolist(),
            self.nonfinite.tolist(),
            self.drift.tolist(),
            forecasts,
        )
        return list(map(_item, zip(*columns, strict=True)))


_item: Callable[[tuple[Any, ...]], ItemResult] = functools.partial(tuple.__new__, ItemResult)
"""An ``ItemResult`` from a tuple of its eight fields, all in C (``ItemResult(*fields)`` runs the named
tuple's Python ``__new__``: about five times the cost per item)."""

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1


@dataclass(slots=True)
class _Entry:
    """A spec shared by resident streams: the one spec object they hold, their pool, how many they are."""

    spec: StreamSpec
    pool: StreamPool
    streams: int = 0


class Engine:
    """All resident streams on one device."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        kernels: Kernels = "auto",
        *,
        memory_budget: int | None = None,
    ) -> None:
        """``kernels``: ``auto`` steps with fused CPU kernels where they apply, ``torch`` never
        (:mod:`models.kernels`)."""
        self.device = torch.device(device)
        self.kernels: Kernels = kernels
        self.memory_budget = memory_budget
        """Bytes the pools' state may take in all (None: no limit); :meth:`add` refuses what goes over."""
        self._pools: dict[tuple[object, ...], StreamPool] = {}
        self._streams: dict[str, int] = {}  # id -> entry << 32 | slot
        self._entries: list[_Entry | None] = []
        self._entry_of: dict[StreamSpec, int] = {}
        self._free_entries: list[int] = []

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    @property
    def pools(self) -> list[StreamPool]:
        return list(self._pools.values())

    def _code(self, stream_id: str) -> int:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(stream_id) from None

    def _entry(self, code: int) -> _Entry:
        entry = self._entries[code >> _SLOT_BITS]
        assert entry is not None
        return entry

    def locate(self, stream_id: str) -> StreamLocation:
        code = self._code(stream_id)
        entry = self._entry(code)
        return StreamLocation(entry.pool, code & _SLOT_MASK, entry.spec)

    def spec_of(self, stream_id: str) -> StreamSpec | None:
        """The stream's spec, None if there is no such stream: `locate`'s answer without building it (the
        service checks every stream of every batch again before applying it)."""
        code = self._streams.get(stream_id)
        return None if code is None else self._entry(code).spec

    def add(self, stream_id: str, spec: StreamSpec) -> StreamLocation:
        """Create a stream in its pool (replacing nothing: remove first to replace)."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} already exists")
        self.check_budget(spec)
        index = self._entry_index(spec)
        entry = self._entries[index]
        assert entry is not None
        slot = entry.pool.add(entry.spec)
        entry.streams += 1
        self._streams[stream_id] = index << _SLOT_BITS | slot
        return StreamLocation(entry.pool, slot, entry.spec)

    def _entry_index(self, spec: StreamSpec) -> int:
        """The entry of ``spec`` (made, with its pool, on first use)."""
        index = self._entry_of.get(spec)
        if index is None:
            key = spec.pool_key()
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = StreamPool(spec, self.device, kernels=self.kernels)
            index = self._free_entries.pop() if self._free_entries else len(self._entries)
            if index == len(self._entries):
                self._entries.append(None)
            self._entries[index] = _Entry(spec, pool)
            self._entry_of[spec] = index
        return index

    def remove(self, stream_id: str) -> None:
        code = self._code(stream_id)
        entry = self._entry(code)
        entry.pool.remove(code & _SLOT_MASK)
        del self._streams[stream_id]
        entry.streams -= 1
        if entry.streams == 0:
            index = self._entry_of.pop(entry.spec)
            self._entries[index] = None
            self._free_entries.append(index)
        if entry.pool.size == 0:
            # An empty pool is dropped, so deleting streams gives their memory back.
            del self._pools[entry.spec.pool_key()]
            release_memory()

    def growth_bytes(self, spec: StreamSpec) -> int:
        """Bytes that adding one stream of ``spec`` would allocate now (0 when its pool has a free slot)."""
        index = self._entry_of.get(spec)
        entry = self._entries[index] if index is not None else None
        pool = entry.pool if entry is not None else self._pools.get(spec.pool_key())
        if pool is None:
            return initial_capacity(spec) * slot_bytes(spec)
        return 0 if pool.size < pool.capacity else pool.state_bytes()

    def check_budget(self, spec: StreamSpec) -> None:
        """Raise :class:`MemoryBudgetError` if adding a stream of ``spec`` now would go over the budget."""
        if self.memory_budget is None:
            return
        needed, used = self.growth_bytes(spec), self.state_bytes()
        if needed and used + needed > self.memory_budget:
            raise MemoryBudgetError(needed, used, self.memory_budget)

    def export(self, stream_id: str) -> dict[str, Tensor]:
        location = self.locate(stream_id)
        return location.pool.export(location.slot)

    def load(self, stream_id: str, state: Mapping[str, Tensor]) -> None:
        location = self.locate(stream_id)
        location.pool.load(location.slot, state)

    # ----- many streams at once (batched checkpoints and restores) ----------------------------------------

    def pool_of(self, spec: StreamSpec) -> StreamPool:
        """The pool streams of ``spec`` live in (made if there is none yet): its `StreamPool.packed` is the
        layout `export_rows` gives and `load_many` takes."""
        pool = self._pools.get(spec.pool_key())
        if pool is None:
            self.check_budget(spec)
            pool = self._pools[spec.pool_key()] = StreamPool(spec, self.device, kernels=self.kernels)
        return pool

    def export_rows(self, stream_ids: Sequence[str]) -> list[tuple[StreamPool, list[str], list[Tensor]]]:
        """Many streams' state as their pools' rows, grouped by pool: ``(pool, ids, [float, int, bool]
        rows [n, width])`` on the CPU; one gather per pool and buffer (a checkpoint pass)."""
        groups: dict[int, tuple[StreamPool, list[str], list[int]]] = {}
        for stream_id in stream_ids:
            code = self._code(stream_id)
            pool = self._entry(code).pool
            group = groups.setdefault(id(pool), (pool, [], []))
            group[1].append(stream_id)
            group[2].append(code & _SLOT_MASK)
        return [(pool, ids, pool.export_rows(np.asarray(slots))) for pool, ids, slots in groups.values()]

    def load_many(self, stream_ids: Sequence[str], spec: StreamSpec, rows: Sequence[Tensor]) -> None:
        """Add new streams of one spec with their state given as rows laid out like their pool's buffers
        (`pool_of`): a restore of many streams in one copy per buffer."""
        if len(set(stream_ids)) != len(stream_ids) or any(s in self._streams for s in stream_ids):
            raise ValueError("load_many takes distinct streams that do not exist yet")
        if len(stream_ids) != int(rows[0].shape[0]):
            raise ValueError(f"{len(stream_ids)} streams, {int(rows[0].shape[0])} rows")
        self._check_budget_many(spec, len(stream_ids))
        index = self._entry_index(spec)
        entry = self._entries[index]
        assert entry is not None
        slots = entry.pool.add_rows(entry.spec, rows)
        entry.streams += len(stream_ids)
        base = index << _SLOT_BITS
        self._streams.update(zip(stream_ids, (base | slot for slot in slots.tolist()), strict=True))

    def _check_budget_many(self, spec: StreamSpec, n: int) -> None:
        """`check_budget` for ``n`` new streams of ``spec`` at once (their pool grows by doubling)."""
        pool = self._pools.get(spec.pool_key())
        if self.memory_budget is None or n == 0 or pool is None:
            self.check_budget(spec)
            return
        capacity = pool.capacity
        while capacity - pool.size < n:
            capacity *= 2
        needed, used = (capacity - pool.capacity) * slot_bytes(spec), self.state_bytes()
        if needed and used + needed > self.memory_budget:
            raise MemoryBudgetError(needed, used, self.memory_budget)

    def state_bytes(self) -> int:
        return sum(pool.state_bytes() for pool in self._pools.values())

    def figures(self, stream_id: str) -> StreamFigures:
        """One stream's figures: steps, losses, gradient norm, beta_t, ||eps||, counters, warming."""
        return self.figures_of([stream_id])[0]

    def figures_of(self, stream_ids: Sequence[str]) -> list[StreamFigures]:
        """The figures of many streams, in order: one gather per pool and buffer."""
        slots, groups = self._group(stream_ids)
        blocks: list[np.ndarray] = []
        order: list[int] = []
        for pool, members in groups:
            items = list(range(len(stream_ids))) if members is None else members
            blocks.append(pool.figure_rows(slots[items]))
            order += items
        if not blocks:
            return []
        rows = dict(zip(order, np.concatenate(blocks).tolist(), strict=True))
        return [StreamFigures.from_row(rows[i]) for i in range(len(stream_ids))]

    def fleet_figures(self) -> FleetFigures:
        """Loss EWMA, beta_t and ||eps|| of every resident stream that has stepped (the fleet histograms),
        with one copy to the host."""
        return FleetFigures.from_rows([pool.fleet_rows() for pool in self._pools.values()])

    def codes(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Where each item's stream lives (its pool and slot, packed), for `observe_arrays`. Valid until
        the next stream is added, removed or moved; a caller that serialises those with the engine's other
        calls (the service's scheduler) may look them up while another call runs, off that call's thread."""
        streams = self._streams
        try:  # map + fromiter: about half the cost of a list comprehension into np.array per id
            return np.fromiter(map(streams.__getitem__, stream_ids), np.int64, len(stream_ids))
        except KeyError as error:
            raise UnknownStreamError(error.args[0]) from None

    def _group(
        self, stream_ids: Sequence[str], codes: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[tuple[StreamPool, list[int] | None]]]:
        """Slots of the items, and the items of each pool (None: all of them, the common one-pool batch)."""
        if codes is None:
            codes = self.codes(stream_ids)
        slots = codes & _SLOT_MASK
        if codes.size == 0:
            return slots, []
        if len(self._pools) == 1:
            return slots, [(next(iter(self._pools.values())), None)]
        entries, inverse = np.unique(codes >> _SLOT_BITS, return_inverse=True)
        order: dict[int, int] = {}  # pool -> group number, in order of first appearance among the entries
        pools: list[StreamPool] = []
        group_of_entry = []
        for e in entries.tolist():
            pool = self._entry(e << _SLOT_BITS).pool
            if id(pool) not in order:
                order[id(pool)] = len(pools)
                pools.append(pool)
            group_of_entry.append(order[id(pool)])
        if len(pools) == 1:
            return slots, [(pools[0], None)]
        owner = np.array(group_of_entry)[inverse]
        return slots, [(pool, np.flatnonzero(owner == k).tolist()) for k, pool in enumerate(pools)]

    def observe(
        self,
        stream_ids: Sequence[str],
        inputs: Sequence[np.ndarray],
        targets: Sequence[np.ndarray | None],
        times: Sequence[float | None] | None = None,
    ) -> list[ItemResult]:
        """One step per item, in order per stream. ``inputs[i]``: features, or the new value of a series;
        ``times[i]``: a series' time of that value (frame number, seconds; None: one unit after the last)."""
        slots, groups = self._group(stream_ids)
        ts = None if times is None else np.array([np.nan if t is None else t for t in times], np.float64)
        if len(groups) == 1 and groups[0][1] is None:
            pool = groups[0][0]
            y = None if _is_series(pool) else _stacked(targets)  # type: ignore[arg-type]
            return _items(pool.observe_host(slots, _stacked(inputs), y, ts))
        results: list[ItemResult | None] = [None] * len(stream_ids)
        for pool, members in groups:
            assert members is not None
            x = _stacked([inputs[i] for i in members])
            y = None
            if not _is_series(pool):
                y = _stacked([targets[i] for i in members])  # type: ignore[misc]
            outcome = pool.observe_host(slots[members], x, y, None if ts is None else ts[members])
            for i, item in zip(members, _items(outcome), strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def observe_arrays(
        self,
        stream_ids: Sequence[str],
        x: np.ndarray,
        y: np.ndarray | None = None,
        times: np.ndarray | None = None,
        codes: np.ndarray | None = None,
    ) -> Outcomes:
        """`observe` on arrays: ``x [n, d]`` features (series: the new values), ``y [n, k]`` targets (None
        for series streams, whose target is the arriving value), ``times [n]`` (NaN: one unit after the
        last). Every item's stream takes these widths (streams of several pools may mix). Arrays in, arrays
        out: no object per item beyond the id lookup. ``codes``: the ids' `codes`, if looked up already."""
        slots, groups = self._group(stream_ids, codes)
        if not groups:
            return Outcomes.empty(0, 0, np.dtype(np.float32), y is None)
        x = np.ascontiguousarray(x)
        y = None if y is None else np.ascontiguousarray(y)
        times = None if times is None else np.ascontiguousarray(times, dtype=np.float64)
        for pool, _ in groups:
            if _is_series(pool) != (y is None):
                raise ValueError("series streams take no targets and the others need them: do not mix them")
        if len(groups) == 1 and groups[0][1] is None:  # arrays straight to the pool's kernel and back
            return Outcomes.host(groups[0][0].observe_host(slots, x, y, times))
        parts = []
        for pool, members in groups:
            assert members is not None
            part = pool.observe_host(
                slots[members],
                x[members],
                None if y is None else y[members],
                None if times is None else times[members],
            )
            parts.append((np.asarray(members), Outcomes.host(part)))
        first = parts[0][1]
        dtype = np.result_type(*(p.predictions.dtype for _, p in parts))
        out = Outcomes.empty(len(stream_ids), first.predictions.shape[1], dtype, first.forecasts is not None)
        for members_array, done in parts:
            out.put(members_array, done)
        return out

    def predict(
        self, stream_ids: Sequence[str], inputs: Sequence[np.ndarray | None]
    ) -> list[list[float] | None]:
        """Predictions without learning (``ar``: the current forecast, None while warming)."""
        slots, groups = self._group(stream_ids)
        out: list[list[float] | None] = [None] * len(stream_ids)
        for pool, group in groups:
            members = list(range(len(stream_ids))) if group is None else group
            x = None if _is_series(pool) else _stacked([inputs[i] for i in members])  # type: ignore[misc]
            for i, row in zip(members, _host_rows(pool.predict_host(slots[members], x)), strict=True):
                out[i] = row
        return out


def _stacked(items: Sequence[np.ndarray]) -> np.ndarray:
    """Items of one shape as one array ``[n, *shape]`` (``np.array``: a third of ``np.stack``'s time; it
    also refuses items of different shapes)."""
    out = np.array(items)
    if out.ndim < 2 or out.dtype == object:
        raise ValueError(f"items must share one shape; got an array of shape {out.shape}")
    return out


def _host_rows(values: np.ndarray) -> list[list[float] | None]:
    """Rows as lists, None for rows with a NaN: ``tolist`` once, then the NaN rows replaced (no loop over
    the rows in the common case, where none has)."""
    rows: list[list[float] | None] = values.tolist()
    return _nan_to_none(rows, np.isnan(values).any(1))


def _host_values(values: np.ndarray) -> list[float | None]:
    """Values as a list, None where NaN."""
    out: list[float | None] = values.tolist()
    return _nan_to_none(out, np.isnan(values))


def _nan_to_none(items: list[Any], bad: np.ndarray) -> list[Any]:
    for i in np.flatnonzero(bad).tolist():
        items[i] = None
    return items


def _items(outcome: HostResult) -> list[ItemResult]:
    """One ``ItemResult`` per observation (built from the columns' tuples: this loop is per item)."""
    n = outcome.steps.shape[0]
    forecasts = _host_rows(outcome.forecasts) if outcome.forecasts is not None else [None] * n
    columns = (
        outcome.steps.tolist(),
        _host_rows(outcome.predictions),
        _host_values(outcome.losses),
        outcome.applied.tolist(),
        outcome.warming.tolist(),
        outcome.nonfinite.tolist(),
        outcome.drift.tolist(),
        forecasts,
    )
    return list(map(_item, zip(*columns, strict=True)))


def _is_series(pool: StreamPool) -> bool:
    """Whether the pool's target is its arriving value (``ar``, ``track``) rather than a given ``y``."""
    return isinstance(pool.model, ARModel | TrackModel)
