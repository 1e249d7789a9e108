"""Each timed series stream's last time, kept on the host, so a time that is not after it is refused (422,
naming ``observations[i].ts``) before anything is applied, instead of coming back as ``applied: false``.

A timed stream is a series on the scale-free path (``ar``, ``track``): its engine refuses, without a step, a
value whose time is not after the last one it applied (models/tracking.py). The registry checks each request
against the time its earlier requests leave (queue order is application order), in the stream's dtype, so it
refuses exactly what the engine would. No engine access per request: a stream created here starts unseen,
and a restored one reads its time from the engine once (one export).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from trackin.models import keys
from trackin.models.specs import ARModel, StreamSpec, TrackModel
from trackin.service.domain.ingest import IngestBatch
from trackin.service.errors import InvalidInput

__all__ = ["UNSEEN", "SeriesTime", "advance", "from_state", "timed"]

SeriesTime = tuple[bool, float]
"""Whether the stream has a value yet, and the time of its last one (the engine's ``series/ts``)."""
UNSEEN: SeriesTime = (False, 0.0)


def timed(spec: StreamSpec) -> bool:
    """Streams whose engine checks times: series on the scale-free path."""
    return spec.tracking and isinstance(spec.model, ARModel | TrackModel)


def from_state(state: Mapping[str, torch.Tensor]) -> SeriesTime:
    """A stream's time from its exported state."""
    return bool(state[keys.SERIES_SEEN] > 0), float(state[keys.SERIES_TS])


def advance(batch: IngestBatch, times: Mapping[str, SeriesTime], prefix: str) -> dict[str, SeriesTime]:
    """The times of the streams in ``times`` after the batch, item by item as the engine takes them (no
    ``ts``: one unit after the last). Raises ``InvalidInput`` for the first item whose time is not after its
    stream's last one; nothing is changed then (the caller keeps the returned times only on success).
    Vectorised when no stream comes twice and the streams share a dtype (the common batch)."""
    ids = batch.stream_ids
    positions = [i for i, stream in enumerate(ids) if stream in times]
    streams = [ids[i] for i in positions]
    dtypes = {batch.specs[stream].dtype for stream in streams}
    if len(set(streams)) < len(streams) or len(dtypes) != 1:
        return _advance_items(batch, times, prefix)  # a stream twice, or two dtypes: item by item
    dtype = np.dtype(np.float32 if dtypes == {"float32"} else np.float64)
    seen = np.array([times[stream][0] for stream in streams], dtype=bool)
    last: np.ndarray = np.array([times[stream][1] for stream in streams], dtype=dtype)
    given = batch.times
    ts = np.array([np.nan if given is None or given[i] is None else given[i] for i in positions])
    with np.errstate(over="ignore", invalid="ignore"):
        now = np.where(np.isnan(ts), last + np.ones(1, dtype), ts.astype(dtype))
        bad = ~np.isfinite(now) | (seen & ~(now > last))
    if bad.any():
        return _advance_items(batch, times, prefix)  # names the first refused item
    return dict(zip(streams, ((True, t) for t in now.tolist()), strict=True))


def _advance_items(batch: IngestBatch, times: Mapping[str, SeriesTime], prefix: str) -> dict[str, SeriesTime]:
    """``advance`` one item at a time."""
    out: dict[str, SeriesTime] = {}
    for i, stream in enumerate(batch.stream_ids):
        current = out.get(stream) or times.get(stream)
        if current is None:
            continue
        cast = np.float32 if batch.specs[stream].dtype == "float32" else np.float64
        seen, last = current[0], cast(current[1])
        ts = batch.times[i] if batch.times is not None else None
        now = cast(ts) if ts is not None else last + cast(1)
        if not np.isfinite(now) or (seen and not now > last):
            rule = f"ts must be after the stream's last time {float(last)!r}" if seen else "ts must be finite"
            given = "no ts: one after the last" if ts is None else f"got {ts!r}"
            if ts is not None and float(cast(ts)) != ts:
                given += f", {float(now)!r} in the stream's {batch.specs[stream].dtype}"
            raise InvalidInput(f"{rule} ({given})", field=f"{prefix}[{i}].ts", stream=stream)
        out[stream] = (True, float(now))
    return out
