"""Check a request's observations against their streams' specs and stack them for the engine.

Per-item work is limited to reading fields and comparing lengths; the numbers themselves are converted and
checked for finiteness in one numpy operation per width. The whole request is checked before anything is
applied, so one bad item rejects the request and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import KeysView, Mapping, Sequence
from typing import Any, cast

import numpy as np

from trackin.models.specs import ARModel, LinearModel, MLPModel, StreamSpec, TrackModel
from trackin.service.errors import InvalidInput
from trackin.service.transport.wire import ObservationIn

__all__ = ["IngestBatch", "build_batch", "check_vector"]


class IngestBatch:
    """Validated observations, in request order, ready for the engine.

    Columnar when every item's stream takes the same widths (the common case): ``x [n, d]``, ``y [n, k]``
    (None for series streams), ``t [n]`` (NaN: no time given), with no object per item. Otherwise (a
    request mixing widths, or series and supervised streams) per-item ``inputs`` and ``targets``; those are
    also derived from the columns on demand, for consumers that walk items (the durability log).
    """

    __slots__ = ("_inputs", "_targets", "_times", "specs", "stream_ids", "t", "transport", "x", "y")

    def __init__(
        self,
        stream_ids: list[str] | None = None,
        inputs: Sequence[np.ndarray] | None = None,
        targets: Sequence[np.ndarray | None] | None = None,
        times: list[float | None] | None = None,
        specs: dict[str, StreamSpec] | None = None,
        transport: str = "rest",
        *,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        t: np.ndarray | None = None,
    ) -> None:
        self.stream_ids: list[str] = stream_ids if stream_ids is not None else []
        self._inputs = inputs
        self._targets = targets
        self._times = times
        self.specs: dict[str, StreamSpec] = specs if specs is not None else {}
        self.transport = transport
        self.x = x
        self.y = y
        self.t = t

    def __len__(self) -> int:
        return len(self.stream_ids)

    @property
    def streams(self) -> KeysView[str]:
        """The batch's streams, each once, in order of first arrival: the keys of ``specs``, which every
        builder fills with exactly those, in that order (so the durability log needs no pass of its own
        over a thousand ids); computed from the ids for a batch built without specs."""
        if self.specs or not self.stream_ids:
            return self.specs.keys()
        return dict.fromkeys(self.stream_ids).keys()

    @property
    def inputs(self) -> Sequence[np.ndarray]:
        """Per item: features, or a series' new values (rows of ``x`` when columnar)."""
        if self._inputs is None:
            self._inputs = list(self.x) if self.x is not None else []
        return self._inputs

    @property
    def targets(self) -> Sequence[np.ndarray | None]:
        """Per item: the target, None for series items."""
        if self._targets is None:
            self._targets = list(self.y) if self.y is not None else [None] * len(self)
        return self._targets

    @property
    def times(self) -> list[float | None] | None:
        """Series' times (``ts``) per item, None for none; None when no item carries one."""
        if self._times is None and self.t is not None:
            self._times = [None if v != v else v for v in self.t.tolist()]
        return self._times


def _as_list(value: float | list[float]) -> list[float]:
    return value if isinstance(value, list) else [value]


def _fail(message: str, where: str, stream: str) -> InvalidInput:
    return InvalidInput(message, field=where, stream=stream)


def check_vector(values: Sequence[float], width: int, where: str, stream: str) -> np.ndarray:
    """One vector: right length and finite (for single-item control-plane calls such as predict)."""
    if len(values) != width:
        raise _fail(f"expected {width} values, got {len(values)}", where, stream)
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise _fail("values must be finite numbers (no NaN or infinity)", f"{where}[{bad[0]}]", stream)
    return array


def build_batch(
    items: Sequence[ObservationIn],
    specs: Mapping[str, StreamSpec],
    *,
    default_stream: str | None = None,
    prefix: str = "observations",
) -> IngestBatch:
    """Validate every item; raise ``InvalidInput`` naming the first bad field (``observations[i].x``)."""
    if len(items) == 1 and (one := _one_supervised(items[0], specs, default_stream)) is not None:
        return one
    if len(items) > 1 and (rows := _supervised_rows(items, specs, default_stream)) is not None:
        return rows
    return _general_batch(items, specs, default_stream=default_stream, prefix=prefix)


def _general_batch(
    items: Sequence[ObservationIn],
    specs: Mapping[str, StreamSpec],
    *,
    default_stream: str | None = None,
    prefix: str = "observations",
) -> IngestBatch:
    """Any request, item by item: every check, and the first bad field named."""
    batch = IngestBatch()
    times: list[float | None] | None = None
    # rows waiting for one numpy conversion per width: (position, field suffix, values); the field's full
    # name (observations[3].x) is only spelt out for an error
    pending: dict[int, list[tuple[int, str, list[float]]]] = {}
    last_ts: dict[str, float] = {}  # a series' times must increase within the request too
    ids = batch.stream_ids
    for i, item in enumerate(items):
        stream = item.stream if item.stream is not None else default_stream
        if stream is None:
            raise InvalidInput("each observation needs a 'stream'", field=f"{prefix}[{i}].stream")
        if default_stream is not None and stream != default_stream:
            raise _fail(
                f"observation for {stream!r} posted to stream {default_stream!r}",
                f"{prefix}[{i}].stream",
                stream,
            )
        spec = specs[stream]
        batch.specs[stream] = spec
        model = spec.model
        if isinstance(model, ARModel | TrackModel):
            family = model.family
            if item.value is None:
                raise _fail(
                    f"{family} streams take 'value' (the newly observed values)",
                    f"{prefix}[{i}].value",
                    stream,
                )
            if item.x is not None or item.y is not None:
                raise _fail(f"{family} streams take 'value', not 'x'/'y'", f"{prefix}[{i}].x", stream)
            value = _as_list(item.value)
            if len(value) != model.dim:
                raise _fail(f"expected {model.dim} values, got {len(value)}", f"{prefix}[{i}].value", stream)
            pending.setdefault(model.dim, []).append((i, "value", value))
            if item.ts is not None:
                _check_time(item.ts, last_ts, stream, f"{prefix}[{i}].ts")
                last_ts[stream] = item.ts
                if times is None:
                    times = [None] * i
            if times is not None:
                times.append(item.ts)
        else:
            if times is not None:
                times.append(None)
            if item.value is not None:
                raise _fail("this stream takes 'x' and 'y', not 'value'", f"{prefix}[{i}].value", stream)
            if item.x is None:
                raise _fail("missing 'x'", f"{prefix}[{i}].x", stream)
            if item.y is None:
                raise _fail(
                    "missing 'y' (use /predict for predictions without a label)", f"{prefix}[{i}].y", stream
                )
            in_dim, out_dim = model.in_dim, model.out_dim
            if len(item.x) != in_dim:
                raise _fail(f"expected {in_dim} values, got {len(item.x)}", f"{prefix}[{i}].x", stream)
            y = _as_list(item.y)
            if len(y) != out_dim:
                raise _fail(f"expected {out_dim} target values, got {len(y)}", f"{prefix}[{i}].y", stream)
            pending.setdefault(in_dim, []).append((i, "x", item.x))
            pending.setdefault(-out_dim, []).append((i, "y", y))
        ids.append(stream)
    n = len(ids)
    checked: dict[int, np.ndarray] = {}
    for width, rows in pending.items():
        array = np.array([values for _, _, values in rows], dtype=np.float64)
        if not np.isfinite(array).all():  # one reduction (half the cost of a per-row one); rows on failure
            finite = np.isfinite(array).all(axis=1)
            position, name, _ = rows[int(np.flatnonzero(~finite)[0])]
            raise _fail(
                "values must be finite numbers (no NaN or infinity)",
                f"{prefix}[{position}].{name}",
                ids[position],
            )
        if width < 0 and any(spec.loss == "bce" for spec in batch.specs.values()):
            for (position, name, _), row in zip(rows, array, strict=True):
                if specs[ids[position]].loss == "bce" and not ((row >= 0) & (row <= 1)).all():
                    raise _fail(
                        "bce targets must lie in [0, 1]", f"{prefix}[{position}].{name}", ids[position]
                    )
        checked[width] = array
    columns = {w: a for w, a in checked.items() if a.shape[0] == n}
    if len(columns) == len(checked) and _columnar(batch, columns, n, times):
        return batch
    inputs: list[np.ndarray] = [_EMPTY] * n
    targets: list[np.ndarray | None] = [None] * n
    for width, array in checked.items():
        column: list[Any] = targets if width < 0 else inputs
        for (position, _, _), row in zip(pending[width], array, strict=True):
            column[position] = row
    return IngestBatch(batch.stream_ids, inputs, targets, times, batch.specs, batch.transport)


def _one_supervised(
    item: ObservationIn, specs: Mapping[str, StreamSpec], default_stream: str | None
) -> IngestBatch | None:
    """The common single-observation request (one supervised item, valid) as a batch, without the general
    path's bookkeeping (about half of its cost); None for anything else, which the general path then
    checks and, if bad, refuses with the field named."""
    stream = item.stream if item.stream is not None else default_stream
    if stream is None or (default_stream is not None and stream != default_stream):
        return None
    spec = specs[stream]
    model = spec.model
    if isinstance(model, ARModel | TrackModel) or item.value is not None or item.x is None or item.y is None:
        return None
    y = _as_list(item.y)
    if len(item.x) != model.in_dim or len(y) != model.out_dim:
        return None
    x = np.array([item.x], dtype=np.float64)
    target = np.array([y], dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(target).all()):
        return None
    if spec.loss == "bce" and not ((target >= 0) & (target <= 1)).all():
        return None
    return IngestBatch([stream], specs={stream: spec}, x=x, y=target)


def _supervised_rows(
    items: Sequence[ObservationIn], specs: Mapping[str, StreamSpec], default_stream: str | None
) -> IngestBatch | None:
    """Many supervised items whose streams share one input and one target width, all valid (the common
    multi-stream request in rows): one array per column and the checks on the arrays, with no per-item
    bookkeeping (a fifth of the general path's cost); None for anything else, which the general path then
    checks and, if bad, refuses with the field named."""
    streams = [item.stream if item.stream is not None else default_stream for item in items]
    if None in streams or (default_stream is not None and any(s != default_stream for s in streams)):
        return None
    ids = cast(list[str], streams)
    if any(i.x is None or i.y is None or i.value is not None or i.ts is not None for i in items):
        return None
    chosen = {stream: specs[stream] for stream in dict.fromkeys(ids)}
    models = [spec.model for spec in chosen.values()]
    supervised = [m for m in models if isinstance(m, LinearModel | MLPModel)]
    widths = {(m.in_dim, m.out_dim) for m in supervised}
    if len(supervised) != len(models) or len(widths) != 1:
        return None
    if any(spec.loss == "bce" for spec in chosen.values()):
        return None  # a target range to check per stream: the general path's
    try:
        x = np.array([item.x for item in items], dtype=np.float64)
        y = np.array([item.y for item in items], dtype=np.float64)
    except (ValueError, TypeError):  # ragged rows, or scalars beside lists
        return None
    if y.ndim == 1:
        y = y[:, None]
    (in_dim, out_dim), n = widths.pop(), len(items)
    if x.shape != (n, in_dim) or y.shape != (n, out_dim):
        return None
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    return IngestBatch(ids, specs=chosen, x=x, y=y)


def _columnar(
    batch: IngestBatch, columns: dict[int, np.ndarray], n: int, times: list[float | None] | None
) -> bool:
    """Fill the batch's columns when one input width and at most one target width cover every item."""
    x = [a for w, a in columns.items() if w > 0]
    y = [a for w, a in columns.items() if w < 0]
    kinds = len(columns)
    if len(x) != 1 or kinds > 2 or (kinds == 2 and len(y) != 1) or n == 0:
        return False
    batch.x = x[0]
    batch.y = y[0] if y else None
    if times is not None:
        batch.t = np.array([np.nan if v is None else v for v in times], dtype=np.float64)
    return True


_EMPTY = np.empty(0)


def _check_time(ts: float, last: dict[str, float], stream: str, where: str) -> None:
    """A finite time, after the stream's previous one in this request (the engine refuses, without a
    step, a time that is not after the last one it applied)."""
    if not math.isfinite(ts):
        raise _fail("ts must be a finite number", where, stream)
    previous = last.get(stream)
    if previous is not None and not ts > previous:
        raise _fail(f"ts must increase along a stream: {ts} after {previous}", where, stream)
