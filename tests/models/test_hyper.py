"""The hyperparameter declarations (models/hyper.py) are the one source: the specs, the optimizer classes and
the pool derive from them, so they accept the same values and agree on defaults. (Values, not spellings: the
spec also parses JSON-ish strings such as "0.5", which the optimizer classes, taking Python values, refuse.)
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from trackin.models.baselines import AdamBaseline, DebiasedSGD
from trackin.models.hyper import ADAM, OPTIMIZERS, SGD, TRACKIN, Hyper, Hyperparameters
from trackin.models.pool import StreamPool
from trackin.models.specs import TRACKIN_EXTRA, AdamSpec, LinearModel, SGDSpec, StreamSpec, TrackInSpec
from trackin.models.trackin import TrackIn

TABLE: list[tuple[Hyperparameters, type[BaseModel], type[torch.optim.Optimizer]]] = [
    (TRACKIN, TrackInSpec, TrackIn),
    (SGD, SGDSpec, DebiasedSGD),
    (ADAM, AdamSpec, AdamBaseline),
]


def probes(h: Hyper) -> list[Any]:
    """Values on, just inside and just outside each bound, and the non-finite ones."""
    if h.choices:
        return [*h.choices, "sign", None]
    if isinstance(h.default, bool):
        return [True, False, 0, 1, 2]
    values: list[Any] = [math.nan, math.inf, -math.inf, None, 0.0, 1.0, 1e4]
    for bound in (h.gt, h.ge, h.lt, h.le):
        if bound is not None:
            values += [bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)]
    return values


CASES = [(hyper, spec, cls, h, v) for hyper, spec, cls in TABLE for h in hyper for v in probes(h)]


@pytest.mark.parametrize(
    ("hyper", "spec", "cls", "h", "value"), CASES, ids=[f"{c[0].name}-{c[3].name}={c[4]!r}" for c in CASES]
)
def test_spec_and_optimizer_accept_the_same_values(
    hyper: Hyperparameters, spec: type[BaseModel], cls: Any, h: Hyper, value: Any
) -> None:
    try:
        spec(**{h.name: value})
    except ValidationError:
        with pytest.raises(ValueError, match=rf"^Invalid {h.name}: "):
            cls([nn.Parameter(torch.zeros(2))], **{h.name: value})
    else:
        cls([nn.Parameter(torch.zeros(2))], **{h.name: value})


@pytest.mark.parametrize(("hyper", "spec", "cls"), TABLE, ids=[h.name for h, _, _ in TABLE])
def test_defaults_agree(hyper: Hyperparameters, spec: type[BaseModel], cls: Any) -> None:
    signature = inspect.signature(cls.__init__).parameters
    dumped = spec().model_dump(exclude={"name", *TRACKIN_EXTRA})
    assert list(dumped) == list(hyper.names)
    for name, default in hyper.defaults.items():
        assert signature[name].default == default == dumped[name], name
    group = cls([nn.Parameter(torch.zeros(1))]).param_groups[0]
    assert {name: group[name] for name in hyper.names} == hyper.defaults


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_pool_keeps_one_column_per_hyperparameter(name: str) -> None:
    spec = StreamSpec(model=LinearModel(in_dim=2), optimizer={"name": name})  # type: ignore[arg-type]
    pool = StreamPool(spec)
    columns = [key.removeprefix("hyper/") for key in pool.state if key.startswith("hyper/")]
    assert columns == [*OPTIMIZERS[name].names, "huber_delta"]


def test_gated_buffers() -> None:
    assert TRACKIN.state_buffers({"eta": 0.0}) == ("momentum",)
    assert TRACKIN.state_buffers({"eta": 0.1}) == ("momentum", "eps")
    assert SGD.state_buffers({"momentum": 0.0}) == ()
    assert ADAM.state_buffers({}) == ("exp_avg", "exp_avg_sq")
