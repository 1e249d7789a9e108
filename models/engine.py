"""The multi-stream engine: stream ids mapped to slots of pools, one vectorised step per pool and batch.

The id -> (pool, slot) mapping is the only per-stream Python object; everything a stream learns lives in its
pool's stacked tensors. A batch may mix pools: items are grouped by pool (a loop over pools, never over
streams) and each pool observes its share in one call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .pool import ObserveResult, StreamPool
from .specs import ARModel, StreamSpec

__all__ = ["Engine", "ItemResult", "StreamLocation", "UnknownStreamError", "resolve_device"]


class UnknownStreamError(KeyError):
    """No resident stream has this id."""


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


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One observation's outcome, as plain Python values for the wire."""

    step: int
    prediction: list[float] | None
    loss: float | None
    applied: bool
    warming: bool
    nonfinite: bool
    drift: bool
    forecast: list[float] | None


class Engine:
    """All resident streams on one device."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._pools: dict[tuple[object, ...], StreamPool] = {}
        self._streams: dict[str, StreamLocation] = {}
        # Equal specs share one object and their pool is found without recomputing the pool key: a
        # million streams of one spec hold one spec, not a million copies. Entry: [spec, pool, streams].
        self._specs: dict[StreamSpec, list[Any]] = {}

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    @property
    def pools(self) -> list[StreamPool]:
        return list(self._pools.values())

    def locate(self, stream_id: str) -> StreamLocation:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(stream_id) from None

    def add(self, stream_id: str, spec: StreamSpec) -> StreamLocation:
        """Create a stream in its pool (replacing nothing: remove first to replace)."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} already exists")
        entry = self._specs.get(spec)
        if entry is None:
            key = spec.pool_key()
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = StreamPool(spec, self.device)
            entry = self._specs[spec] = [spec, pool, 0]
        shared, pool = entry[0], entry[1]
        location = StreamLocation(pool, pool.add(shared), shared)
        entry[2] += 1
        self._streams[stream_id] = location
        return location

    def remove(self, stream_id: str) -> None:
        location = self.locate(stream_id)
        location.pool.remove(location.slot)
        del self._streams[stream_id]
        entry = self._specs[location.spec]
        entry[2] -= 1
        if entry[2] == 0:
            del self._specs[location.spec]

    def export(self, stream_id: str) -> dict[str, Tensor]:
        location = self.locate(stream_id)
        return location.pool.export(location.slot)

    def load(self, stream_id: str, state: Mapping[str, Tensor]) -> None:
        location = self.locate(stream_id)
        location.pool.load(location.slot, state)

    def state_bytes(self) -> int:
        return sum(pool.state_bytes() for pool in self._pools.values())

    def _group(
        self, stream_ids: Sequence[str]
    ) -> tuple[np.ndarray, list[tuple[StreamPool, list[int] | None]]]:
        """Slots of the items, and the items of each pool (None: all of them, the common one-pool batch)."""
        streams = self._streams
        try:
            locations = [streams[stream_id] for stream_id in stream_ids]
        except KeyError as error:
            raise UnknownStreamError(error.args[0]) from None
        slots = np.array([loc.slot for loc in locations], dtype=np.int64)
        if not locations:
            return slots, []
        first = locations[0].pool
        if len(self._pools) == 1 or all(loc.pool is first for loc in locations):
            return slots, [(first, None)]
        groups: dict[int, tuple[StreamPool, list[int]]] = {}
        for i, loc in enumerate(locations):
            groups.setdefault(id(loc.pool), (loc.pool, []))[1].append(i)
        return slots, list(groups.values())

    def observe(
        self,
        stream_ids: Sequence[str],
        inputs: Sequence[np.ndarray],
        targets: Sequence[np.ndarray | None],
    ) -> list[ItemResult]:
        """One step per item, in order per stream. ``inputs[i]``: features, or the new value for ``ar``."""
        slots, groups = self._group(stream_ids)
        if len(groups) == 1 and groups[0][1] is None:
            pool = groups[0][0]
            x = torch.from_numpy(_stacked(inputs))
            y = None if isinstance(pool.model, ARModel) else torch.from_numpy(_stacked(targets))  # type: ignore[arg-type]
            return list(_items(pool.observe(slots, x, y)))
        results: list[ItemResult | None] = [None] * len(stream_ids)
        for pool, members in groups:
            assert members is not None
            x = torch.from_numpy(_stacked([inputs[i] for i in members]))
            y = None
            if not isinstance(pool.model, ARModel):
                y = torch.from_numpy(_stacked([targets[i] for i in members]))  # type: ignore[misc]
            outcome = pool.observe(slots[members], x, y)
            for i, item in zip(members, _items(outcome), strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def predict(
        self, stream_ids: Sequence[str], inputs: Sequence[np.ndarray | None]
    ) -> list[list[float] | None]:
        """Predictions without learning (``ar``: the current forecast, None while warming)."""
        slots, groups = self._group(stream_ids)
        out: list[list[float] | None] = [None] * len(stream_ids)
        for pool, group in groups:
            members = list(range(len(stream_ids))) if group is None else group
            x = None
            if not isinstance(pool.model, ARModel):
                x = torch.from_numpy(_stacked([inputs[i] for i in members]))  # type: ignore[misc]
            values = pool.predict(slots[members], x)
            for i, row in zip(members, _rows(values), strict=True):
                out[i] = row
        return out


def _stacked(items: Sequence[np.ndarray]) -> np.ndarray:
    """Items of one shape as one array ``[n, *shape]`` (``np.array``: a third of ``np.stack``'s time; it
    also refuses items of different shapes)."""
    out = np.array(items)
    if out.ndim < 2 or out.dtype == object:
        raise ValueError(f"items must share one shape; got an array of shape {out.shape}")
    return out


def _rows(values: Tensor) -> list[list[float] | None]:
    """Rows as lists, None for rows with a NaN."""
    nan = values.isnan().any(1).tolist()
    return [None if bad else row for row, bad in zip(values.tolist(), nan, strict=True)]


def _items(outcome: ObserveResult) -> Iterator[ItemResult]:
    n = outcome.steps.shape[0]
    forecasts = _rows(outcome.forecasts) if outcome.forecasts is not None else [None] * n
    for step, pred, loss, applied, warming, nonfinite, drift, forecast in zip(
        outcome.steps.tolist(),
        _rows(outcome.predictions),
        outcome.losses.tolist(),
        outcome.applied.tolist(),
        outcome.warming.tolist(),
        outcome.nonfinite.tolist(),
        outcome.drift.tolist(),
        forecasts,
        strict=True,
    ):
        yield ItemResult(
            step=step,
            prediction=pred,
            loss=None if loss != loss else loss,
            applied=applied,
            warming=warming,
            nonfinite=nonfinite,
            drift=drift,
            forecast=forecast,
        )
