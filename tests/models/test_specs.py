"""Spec validation: unknown fields, ranges, discriminated unions, the defaults' single source, pool keys."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

from trackin.models.specs import (
    TRACKIN_DEFAULTS,
    TRACKIN_EXTRA,
    AdamSpec,
    ARModel,
    DriftSpec,
    LinearModel,
    MLPModel,
    SGDSpec,
    StreamSpec,
    TrackInSpec,
    layer_sizes,
)
from trackin.models.trackin import TrackIn

INVALID: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (TrackInSpec, {"lr": 0.0}, "lr"),
    (TrackInSpec, {"gamma": 1.0}, "gamma"),
    (TrackInSpec, {"beta": -1.0}, "beta"),
    (TrackInSpec, {"beta_rule": "sign"}, "beta_rule"),
    (TrackInSpec, {"eta": -0.1}, "eta"),
    (TrackInSpec, {"eps_decay": 1.1}, "eps_decay"),
    (TrackInSpec, {"max_grad_norm": 0.0}, "max_grad_norm"),
    (TrackInSpec, {"learning_rate": 0.1}, "learning_rate"),  # extra fields are errors, not ignored
    (SGDSpec, {"momentum": 1.0}, "momentum"),
    (SGDSpec, {"dampening": 2.0}, "dampening"),
    (SGDSpec, {"nesterov": True}, "nesterov"),
    (AdamSpec, {"beta2": 1.0}, "beta2"),
    (AdamSpec, {"eps": 0.0}, "eps"),
    (LinearModel, {"in_dim": 0}, "in_dim"),
    (LinearModel, {"in_dim": 5000}, "in_dim"),
    (LinearModel, {"in_dim": 2, "seed": -1}, "seed"),
    (LinearModel, {"in_dim": 2, "init": "xavier"}, "init"),
    (MLPModel, {"in_dim": 2, "hidden": ()}, "hidden"),
    (MLPModel, {"in_dim": 2, "hidden": (4,) * 9}, "hidden"),
    (MLPModel, {"in_dim": 2, "activation": "swish"}, "activation"),
    (ARModel, {"lags": 0}, "lags"),
    (ARModel, {"target": "ratio"}, "target"),
    (DriftSpec, {"threshold": 0.0}, "threshold"),
    (DriftSpec, {"warmup": 0}, "warmup"),
    # each of these passed validation and then failed with a 500 (a float32 column holding inf, an int64
    # overflow, a seed torch refuses)
    (DriftSpec, {"warmup": 2**63}, "warmup"),
    (DriftSpec, {"threshold": 1e300}, "threshold"),
    (StreamSpec, {"model": {"family": "linear", "in_dim": 2}, "huber_delta": 1e300}, "huber_delta"),
    (LinearModel, {"in_dim": 2, "seed": 2**64}, "seed"),
    (TrackInSpec, {"weight_decay": 1e300}, "weight_decay"),
    (TrackInSpec, {"max_grad_norm": 1e300}, "max_grad_norm"),
    (AdamSpec, {"eps": 1e300}, "eps"),
]


@pytest.mark.parametrize(("cls", "fields", "name"), INVALID, ids=[f"{c.__name__}-{n}" for c, _, n in INVALID])
def test_invalid_fields_are_rejected_by_name(cls: type[BaseModel], fields: dict[str, Any], name: str) -> None:
    base = {"in_dim": 2} if cls in (LinearModel, MLPModel) else {}
    with pytest.raises(ValidationError) as info:
        cls(**{**base, **fields})
    assert name in {str(loc) for e in info.value.errors() for loc in e["loc"]}


def test_specs_are_frozen() -> None:
    spec = TrackInSpec()
    with pytest.raises(ValidationError):
        spec.lr = 1.0  # type: ignore[misc]


def test_trackin_defaults_come_from_the_spec() -> None:
    """``TrackInSpec`` is the single place for TrackIn's defaults: the optimizer's signature uses them."""
    signature = inspect.signature(TrackIn.__init__).parameters
    spec = TrackInSpec()
    assert spec == TRACKIN_DEFAULTS
    for name in (
        "lr",
        "gamma",
        "beta",
        "beta_rule",
        "debias",
        "eta",
        "eps_decay",
        "weight_decay",
        "max_grad_norm",
    ):
        assert signature[name].default == getattr(spec, name), name


def test_trackin_spec_maps_onto_the_constructor() -> None:
    spec = TrackInSpec(lr=0.2, beta_rule="norm", eta=0.01, max_grad_norm=3.0)
    opt = TrackIn([torch.nn.Parameter(torch.zeros(1))], **spec.model_dump(exclude={"name", *TRACKIN_EXTRA}))
    group = opt.param_groups[0]
    assert (group["lr"], group["beta_rule"], group["eta"], group["max_grad_norm"]) == (0.2, "norm", 0.01, 3.0)


def test_stream_spec_parses_discriminated_unions() -> None:
    spec = StreamSpec.model_validate(
        {
            "model": {"family": "mlp", "in_dim": 3, "hidden": [8, 8]},
            "optimizer": {"name": "adam", "lr": 0.001},
            "loss": "huber",
        }
    )
    assert isinstance(spec.model, MLPModel)
    assert spec.model.hidden == (8, 8)
    assert isinstance(spec.optimizer, AdamSpec)
    assert isinstance(StreamSpec(model=LinearModel(in_dim=2)).optimizer, TrackInSpec)
    with pytest.raises(ValidationError):
        StreamSpec.model_validate({"model": {"family": "tree", "in_dim": 3}})
    with pytest.raises(ValidationError):
        StreamSpec.model_validate(
            {"model": {"family": "linear", "in_dim": 3}, "optimizer": {"name": "rmsprop"}}
        )
    with pytest.raises(ValidationError):
        StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}, "dtype": "float16"})


def test_json_round_trip() -> None:
    spec = StreamSpec(model=ARModel(dim=2, lags=4, hidden=(3,)), optimizer=SGDSpec(momentum=0.9))
    assert StreamSpec.model_validate_json(spec.model_dump_json()) == spec


def test_layer_sizes_and_window() -> None:
    assert layer_sizes(LinearModel(in_dim=3, out_dim=2)) == [3, 2]
    assert layer_sizes(MLPModel(in_dim=3, hidden=(5, 4), out_dim=2)) == [3, 5, 4, 2]
    assert layer_sizes(ARModel(dim=2, lags=3, hidden=(6,))) == [6, 6, 2]
    assert ARModel(lags=5, target="delta").window == 6
    assert ARModel(lags=5, target="level").window == 5


def test_pool_key_groups_streams_that_can_share_tensors() -> None:
    base = StreamSpec(model=LinearModel(in_dim=3, seed=1))
    same_shape = StreamSpec(model=LinearModel(in_dim=3, seed=2, init="random"), optimizer=TrackInSpec(lr=0.3))
    assert base.pool_key() == same_shape.pool_key()
    different = [
        StreamSpec(model=LinearModel(in_dim=4)),
        StreamSpec(model=LinearModel(in_dim=3), loss="huber"),
        StreamSpec(model=LinearModel(in_dim=3), optimizer=TrackInSpec(eta=0.1)),
        StreamSpec(model=LinearModel(in_dim=3), optimizer=AdamSpec()),
        StreamSpec(model=LinearModel(in_dim=3), dtype="float64"),
        StreamSpec(model=MLPModel(in_dim=3)),
    ]
    keys = {s.pool_key() for s in different}
    assert base.pool_key() not in keys
    assert len(keys) == len(different)
