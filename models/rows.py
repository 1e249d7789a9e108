"""What a stream's row of a pool holds: the layout of its keys, its initial values, and which settings the
resident streams share.

Every setting (the optimizer's hyperparameters, as :mod:`models.hyper` declares them, Huber's delta and the
drift detector's settings) is a per-stream column, so streams of one pool may differ in any of them. The
pool counts the values its resident streams hold: while they all share one, a round passes it to the
functional core as a Python number (the core then skips work, e.g. no weight decay or clipping) instead of
the column of the gathered rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trackin.models import keys, tracking
from trackin.models.families import init_params, param_shapes
from trackin.models.hyper import Hyperparameters
from trackin.models.layout import BOOL, FLOAT, INT, PackedState
from trackin.models.specs import ARModel, ModelSpec, StreamSpec, TrackModel
from trackin.models.standardize import INITIAL as NORM_INITIAL

__all__ = ["Blocks", "Settings", "Template", "Templates", "state_entries"]

Blocks = tuple[Tensor, Tensor, Tensor | None]
"""Gathered rows of the float, int and bool buffers (the bool ones only when a bool setting differs)."""

_DRIFT_FLOATS = (keys.DRIFT_MEAN, keys.DRIFT_TOTAL, keys.DRIFT_MIN, keys.DRIFT_DELTA, keys.DRIFT_THRESHOLD)
_DRIFT_INTS = (keys.DRIFT_N, keys.DRIFT_COUNT, keys.DRIFT_LAST_STEP, keys.DRIFT_WARMUP)
_DRIFT_SETTINGS = (
    keys.DRIFT_DELTA,
    keys.DRIFT_THRESHOLD,
    keys.DRIFT_WARMUP,
    keys.DRIFT_ENABLED,
    keys.DRIFT_RESET,
)
_TEMPLATE_CACHE = 256


def state_entries(
    model: ModelSpec,
    hyper: Hyperparameters,
    buffers: Sequence[str],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    extra: Sequence[tuple[str, tuple[int, ...]]] = (),
    norm: Sequence[tuple[str, tuple[int, ...]]] = (),
) -> list[tuple[str, tuple[int, ...], int]]:
    """Every key's per-stream shape and buffer, in layout order (see :mod:`models.layout`): the parameters,
    then each optimizer buffer over all parameters, form flat slices of the float buffer. ``shapes``
    overrides the family's parameters, ``extra`` adds float state (the tracking path's) and ``norm`` the
    first-order path's (:func:`models.standardize.entries`, :func:`models.naive_mix.entries`)."""
    if shapes is None:
        assert not isinstance(model, TrackModel), "a track model's weights are the tracking path's"
        shapes = param_shapes(model)
    entries = [(keys.param(name), shape, FLOAT) for name, shape in shapes.items()]
    for kind in buffers:
        entries += [(keys.buffer(kind, name), shape, FLOAT) for name, shape in shapes.items()]
    entries += [(keys.opt(name), (), FLOAT) for name in hyper.row_state]
    entries += [(key, (), FLOAT) for key in keys.FIGURES]
    entries.append((keys.STEP, (), INT))
    entries += [(keys.hyper(h.name), (), h.kind) for h in hyper]
    entries.append((keys.HUBER_DELTA, (), FLOAT))
    entries += [(key, shape, FLOAT) for key, shape in extra]
    if isinstance(model, ARModel) and not extra:
        entries.append((keys.AR_WINDOW, (model.window, model.dim), FLOAT))
        entries.append((keys.AR_FILLED, (), INT))
    entries += [(key, shape, FLOAT) for key, shape in norm]
    entries.append((keys.NONFINITE, (), INT))
    entries += [(key, (), FLOAT) for key in _DRIFT_FLOATS]
    entries += [(key, (), INT) for key in _DRIFT_INTS]
    entries += [(keys.DRIFT_ENABLED, (), BOOL), (keys.DRIFT_RESET, (), BOOL)]
    return entries


class Settings:
    """How many resident streams hold each value of each setting, and the value when all share one."""

    def __init__(self, hyper: Hyperparameters, packed: PackedState) -> None:
        self._hyper = hyper
        self._columns = packed.columns
        self._hyper_keys = [(h, keys.hyper(h.name)) for h in hyper]
        tracked = [key for _, key in self._hyper_keys] + [keys.HUBER_DELTA, *_DRIFT_SETTINGS]
        self._counts: dict[str, Counter[object]] = {key: Counter() for key in tracked}
        self._shared: dict[str, object] = dict.fromkeys(tracked)  # None: differs between streams
        self._bools = [key for key in tracked if self._columns[key].kind == BOOL]
        self.need_bool = False
        """Some bool setting differs between streams: a round gathers the bool buffer."""
        self._core: dict[str, Any] | None = None  # the core's arguments when every hyperparameter is shared

    def read(self, views: Mapping[str, Tensor]) -> dict[str, object]:
        """The settings of the first row of ``views``, as Python values."""
        return {key: views[key][0].item() for key in self._counts}

    def count(self, values: Mapping[str, object], sign: int) -> None:
        """Count the settings of a stream that arrives (+1) or leaves (-1); refresh the shared values."""
        for key, value in values.items():
            counter = self._counts[key]
            counter[value] += sign
            if counter[value] <= 0:
                del counter[value]
            self._shared[key] = next(iter(counter)) if len(counter) == 1 else None
        self._refresh()

    def count_rows(self, blocks: Sequence[Tensor]) -> None:
        """`count` (+1) for every row of ``blocks`` at once: one host copy per setting, not per stream."""
        for key, counter in self._counts.items():
            c = self._columns[key]
            counter.update(blocks[c.kind][:, c.start].tolist())
            self._shared[key] = next(iter(counter)) if len(counter) == 1 else None
        self._refresh()

    def _refresh(self) -> None:
        self._core = None
        if all(self._shared[key] is not None for _, key in self._hyper_keys):
            self._core = {h.name: h.to_core(self._shared[key]) for h, key in self._hyper_keys}
        self.need_bool = any(self._shared[key] is None for key in self._bools)

    def value(self, key: str, blocks: Blocks) -> float | int | bool | Tensor:
        """A setting's value when every resident stream shares it, else its column of the gathered rows."""
        value = self._shared[key]
        if value is None:
            c = self._columns[key]
            block = blocks[c.kind]
            assert block is not None
            return block[:, c.start]
        assert isinstance(value, float | int | bool)
        return value

    def core(self, blocks: Blocks) -> dict[str, Any]:
        """The hyperparameters as the functional core takes them: shared ones as Python numbers (a rule by
        its name, no clipping as None), the others as columns ``[rows]``."""
        if self._core is not None:
            return self._core
        out: dict[str, Any] = {}
        for h, key in self._hyper_keys:
            shared = self._shared[key]
            out[h.name] = self.value(key, blocks) if shared is None else h.to_core(shared)
        return out


@dataclass(frozen=True, slots=True)
class Template:
    """A spec's initial row of each buffer, and the values of the settings the pool counts."""

    rows: list[Tensor]
    values: dict[str, object]


class Templates:
    """The initial rows of the specs a pool has seen (cached: adding many streams of one spec is a row copy
    each)."""

    def __init__(
        self, pool_key: tuple[object, ...], hyper: Hyperparameters, packed: PackedState, settings: Settings
    ) -> None:
        self._key = pool_key
        self._hyper = hyper
        self._packed = packed
        self._settings = settings
        self._cache: dict[StreamSpec, Template] = {}
        self._last: tuple[StreamSpec, Template] | None = None

    def __call__(self, spec: StreamSpec) -> Template:
        if self._last is not None and self._last[0] is spec:
            return self._last[1]
        found = self._cache.get(spec)
        if found is None:
            if spec.pool_key() != self._key:
                raise ValueError("spec does not belong to this pool")
            found = self._build(spec)
            if len(self._cache) >= _TEMPLATE_CACHE:
                self._cache.clear()
            self._cache[spec] = found
        self._last = (spec, found)
        return found

    def _build(self, spec: StreamSpec) -> Template:
        packed = self._packed
        rows, views = packed.blank()
        if spec.tracking:  # zero weights (the naive forecast) and the RLS prior
            cov = views[keys.TRACK_COV]
            p = cov.shape[-1]  # every head's covariance, stacked [heads * p, p]
            eye = torch.eye(p, dtype=cov.dtype, device=cov.device).repeat(cov.shape[-2] // p, 1)
            cov.copy_(eye * tracking.prior(tracking.layout(spec.model).kind))
            for key in keys.SKILL_FIGURES:
                views[key].fill_(torch.nan)
        else:
            assert not isinstance(spec.model, TrackModel)
            for name, value in init_params(spec.model, packed.dtypes[FLOAT], packed.device).items():
                views[keys.param(name)][0].copy_(value)
            for key, initial in NORM_INITIAL.items():
                if key in views:
                    views[key].fill_(initial)
            for key in keys.SKILL_FIGURES:  # a first-order series' naive mix (models/naive_mix.py)
                if key in views:
                    views[key].fill_(torch.nan)
        values = spec.optimizer.model_dump()
        for h in self._hyper:
            views[keys.hyper(h.name)].fill_(h.to_column(values[h.name]))
        views[keys.HUBER_DELTA].fill_(spec.huber_delta)
        d = spec.drift
        drift = (d.delta, d.threshold, d.warmup, d.enabled, d.reset_momentum)
        for key, setting in zip(_DRIFT_SETTINGS, drift, strict=True):
            views[key].fill_(setting)
        for key in keys.FIGURES:
            views[key].fill_(torch.nan)
        return Template(rows, self._settings.read(views))
