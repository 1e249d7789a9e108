"""The multi-stream engine: stream ids mapped to slots of pools, one vectorised step per pool and batch.

The id -> (pool, slot) mapping is the only per-stream Python object; everything a stream learns lives in its
pool's stacked tensors. A batch may mix pools: items are grouped by pool (a loop over pools, never over
streams) and each pool observes its share in one call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

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


def _nan_to_none(values: list[float]) -> list[float] | None:
    return None if any(v != v for v in values) else values


class Engine:
    """All resident streams on one device."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._pools: dict[tuple[object, ...], StreamPool] = {}
        self._streams: dict[str, StreamLocation] = {}

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
        key = spec.pool_key()
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = StreamPool(spec, self.device)
        location = StreamLocation(pool, pool.add(spec), spec)
        self._streams[stream_id] = location
        return location

    def remove(self, stream_id: str) -> None:
        location = self.locate(stream_id)
        location.pool.remove(location.slot)
        del self._streams[stream_id]

    def export(self, stream_id: str) -> dict[str, Tensor]:
        location = self.locate(stream_id)
        return location.pool.export(location.slot)

    def load(self, stream_id: str, state: Mapping[str, Tensor]) -> None:
        location = self.locate(stream_id)
        location.pool.load(location.slot, state)

    def state_bytes(self) -> int:
        return sum(pool.state_bytes() for pool in self._pools.values())

    def observe(
        self,
        stream_ids: Sequence[str],
        inputs: Sequence[np.ndarray],
        targets: Sequence[np.ndarray | None],
    ) -> list[ItemResult]:
        """One step per item, in order per stream. ``inputs[i]``: features, or the new value for ``ar``."""
        groups: dict[int, list[int]] = {}
        pools: dict[int, StreamPool] = {}
        slots = np.empty(len(stream_ids), dtype=np.int64)
        for i, stream_id in enumerate(stream_ids):
            location = self.locate(stream_id)
            slots[i] = location.slot
            key = id(location.pool)
            groups.setdefault(key, []).append(i)
            pools[key] = location.pool
        results: list[ItemResult | None] = [None] * len(stream_ids)
        for key, members in groups.items():
            pool = pools[key]
            x = torch.from_numpy(np.stack([inputs[i] for i in members]))
            y = None
            if not isinstance(pool.model, ARModel):
                y = torch.from_numpy(np.stack([targets[i] for i in members]))  # type: ignore[misc]
            outcome = pool.observe(slots[members], x, y)
            for i, item in zip(members, _items(outcome), strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def predict(
        self, stream_ids: Sequence[str], inputs: Sequence[np.ndarray | None]
    ) -> list[list[float] | None]:
        """Predictions without learning (``ar``: the current forecast, None while warming)."""
        out: list[list[float] | None] = [None] * len(stream_ids)
        groups: dict[int, list[int]] = {}
        pools: dict[int, StreamPool] = {}
        slots = np.empty(len(stream_ids), dtype=np.int64)
        for i, stream_id in enumerate(stream_ids):
            location = self.locate(stream_id)
            slots[i] = location.slot
            groups.setdefault(id(location.pool), []).append(i)
            pools[id(location.pool)] = location.pool
        for key, members in groups.items():
            pool = pools[key]
            x = None
            if not isinstance(pool.model, ARModel):
                x = torch.from_numpy(np.stack([inputs[i] for i in members]))  # type: ignore[misc]
            values = pool.predict(slots[members], x).tolist()
            for i, row in zip(members, values, strict=True):
                out[i] = _nan_to_none(row)
        return out


def _items(outcome: ObserveResult) -> Iterator[ItemResult]:
    forecasts = outcome.forecasts.tolist() if outcome.forecasts is not None else None
    for j, (step, pred, loss, applied, warming, nonfinite, drift) in enumerate(
        zip(
            outcome.steps.tolist(),
            outcome.predictions.tolist(),
            outcome.losses.tolist(),
            outcome.applied.tolist(),
            outcome.warming.tolist(),
            outcome.nonfinite.tolist(),
            outcome.drift.tolist(),
            strict=True,
        )
    ):
        yield ItemResult(
            step=step,
            prediction=_nan_to_none(pred),
            loss=None if loss != loss else loss,
            applied=applied,
            warming=warming,
            nonfinite=nonfinite,
            drift=drift,
            forecast=_nan_to_none(forecasts[j]) if forecasts is not None else None,
        )
