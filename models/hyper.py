"""Each optimizer's hyperparameters, declared once: name, default, allowed range, and how a pool stores it.

The declarations ``TRACKIN``, ``SGD`` and ``ADAM`` are the single source; derived from them are

- the pydantic specs (:mod:`models.specs`): one field per hyperparameter, with its default and bounds;
- the ``torch.optim`` classes (:mod:`models.trackin`, :mod:`models.baselines`): their defaults and the
  ``ValueError`` naming an argument outside the same bounds;
- a pool's per-stream columns (:mod:`models.rows`): one column per hyperparameter of the kind its type needs
  (float, bool, or the integer code of a choice), the per-parameter buffers and per-stream optimizer state
  it keeps, and the value handed to the functional core when every stream shares it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trackin.models.functional import BETA_RULES
from trackin.models.layout import BOOL, FLOAT, INT

__all__ = ["ADAM", "OPTIMIZERS", "SGD", "TRACKIN", "Hyper", "Hyperparameters"]

Bound = float | int | None


@dataclass(frozen=True, slots=True)
class Hyper:
    """One hyperparameter. A float with bounds (``gt``, ``ge``, ``lt``, ``le``; always finite), a bool, or a
    choice among ``choices``; ``optional`` floats also take None (stored as +inf: e.g. no clipping)."""

    name: str
    default: float | bool | str | None
    gt: Bound = None
    ge: Bound = None
    lt: Bound = None
    le: Bound = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def kind(self) -> int:
        """The packed buffer of its per-stream column (:mod:`models.layout`)."""
        if self.choices:
            return INT
        return BOOL if isinstance(self.default, bool) else FLOAT

    def allowed(self) -> str:
        """The allowed values, for error messages: ``0 < lr <= 1000.0``, ``finite eps > 0``."""
        if self.choices:
            return ", ".join(self.choices)
        if self.kind == BOOL:
            return "True or False"
        if self.lt is None and self.le is None:
            low = f" > {self.gt}" if self.gt is not None else f" >= {self.ge}" if self.ge is not None else ""
            text = f"finite {self.name}{low}"
        else:
            low = f"{self.gt} < " if self.gt is not None else f"{self.ge} <= " if self.ge is not None else ""
            text = (
                f"{low}{self.name} < {self.lt}" if self.lt is not None else f"{low}{self.name} <= {self.le}"
            )
        return f"{text} or None" if self.optional else text

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming the argument when ``value`` is outside the allowed values."""
        if not self._ok(value):
            raise ValueError(f"Invalid {self.name}: {value!r} (allowed: {self.allowed()})")

    def _ok(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.kind == BOOL:
            return not isinstance(value, str) and value in (
                False,
                True,
            )  # 0 and 1 too, as the spec takes them
        if value is None:
            return self.optional
        try:
            if isinstance(value, bool | str) or not math.isfinite(value):  # NaN and inf too, as in the spec
                return False
        except TypeError:  # not a number
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def to_column(self, value: Any) -> float | int | bool:
        """A spec's value as its per-stream column holds it (a choice by its code, None as +inf)."""
        if self.choices:
            return self.choices.index(value)
        if value is None:
            return math.inf
        assert isinstance(value, float | int | bool)
        return value

    def to_core(self, value: object) -> object:
        """A column's value (shared by every stream of a pool) as the functional core takes it."""
        if self.choices:
            assert isinstance(value, int)
            return self.choices[value]
        if self.optional and value == math.inf:
            return None
        return value


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """An optimizer's declaration: its hyperparameters, in spec order, and the state it keeps per stream.

    ``buffers``: per-parameter buffers as ``(name, gate)``; the buffer exists only while the hyperparameter
    ``gate`` is > 0 (None: always). The first is the momentum a drift clears. ``row_state``: optimizer state
    with one value per stream besides the step count (TrackIn's gradient-norm EWMA ``sq_avg``).
    """

    name: str
    params: tuple[Hyper, ...]
    buffers: tuple[tuple[str, str | None], ...] = ()
    row_state: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Hyper]:
        return iter(self.params)

    def __getitem__(self, name: str) -> Hyper:
        return next(h for h in self.params if h.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.params)

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.params}

    def validate(self, values: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the first hyperparameter outside its allowed values."""
        for h in self.params:
            h.check(values[h.name])

    def state_buffers(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The per-parameter buffers kept with these hyperparameters (eta = 0: TrackIn keeps no eps)."""
        return tuple(name for name, gate in self.buffers if gate is None or values[gate] > 0)


_WEIGHT_DECAY = Hyper("weight_decay", 0.0, ge=0)
_MAX_GRAD_NORM = Hyper("max_grad_norm", None, gt=0, optional=True)

TRACKIN = Hyperparameters(
    "trackin",
    (
        Hyper("lr", 0.04, gt=0, le=1e3),
        Hyper("gamma", 0.98, ge=0, lt=1),
        Hyper("beta", 1.0, ge=0, le=1e3),
        Hyper("beta_rule", "cos", choices=BETA_RULES),
        Hyper("debias", True),
        Hyper("eta", 0.0, ge=0, le=1e3),
        Hyper("eps_decay", 0.9, ge=0, le=1),
        _WEIGHT_DECAY,
        _MAX_GRAD_NORM,
    ),
    buffers=(("momentum", None), ("eps", "eta")),
    row_state=("sq_avg",),
)
"""TrackIn (docs/trackin.md); the defaults were chosen with bench/accuracy.py."""

SGD = Hyperparameters(
    "sgd",
    (
        Hyper("lr", 0.05, gt=0, le=1e3),
        Hyper("momentum", 0.0, ge=0, lt=1),
        Hyper("dampening", 0.0, ge=0, le=1),
        Hyper("debias", False),
        _WEIGHT_DECAY,
        _MAX_GRAD_NORM,
    ),
    buffers=(("momentum", "momentum"),),
)
"""SGD with optional momentum, dampening and debiasing (a baseline)."""

ADAM = Hyperparameters(
    "adam",
    (
        Hyper("lr", 1e-2, gt=0, le=1e3),
        Hyper("beta1", 0.9, ge=0, lt=1),
        Hyper("beta2", 0.999, ge=0, lt=1),
        Hyper("eps", 1e-8, gt=0),
        _WEIGHT_DECAY,
        _MAX_GRAD_NORM,
    ),
    buffers=(("exp_avg", None), ("exp_avg_sq", None)),
)
"""Adam (a baseline)."""

OPTIMIZERS = {h.name: h for h in (TRACKIN, SGD, ADAM)}
"""Declarations by optimizer name (the spec's ``name``)."""
