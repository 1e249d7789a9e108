"""Model families (shapes, forward vs stacked_forward, gradients, initialisation, ar features) and losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from trackin.models.families import (
    FamilyModule,
    ar_features,
    forward,
    init_params,
    param_shapes,
    stacked_forward,
)
from trackin.models.losses import loss_per_row, prediction
from trackin.models.specs import ARModel, LinearModel, MLPModel

DT = torch.float64
Model = LinearModel | MLPModel | ARModel


def test_param_shapes() -> None:
    assert param_shapes(LinearModel(in_dim=3, out_dim=2)) == {"weight0": (2, 3), "bias0": (2,)}
    assert param_shapes(MLPModel(in_dim=3, hidden=(4, 5), out_dim=2)) == {
        "weight0": (4, 3),
        "bias0": (4,),
        "weight1": (5, 4),
        "bias1": (5,),
        "weight2": (2, 5),
        "bias2": (2,),
    }
    # ar: lags * dim inputs, dim outputs
    assert param_shapes(ARModel(dim=2, lags=3)) == {"weight0": (2, 6), "bias0": (2,)}
    assert param_shapes(ARModel(dim=2, lags=3, hidden=(7,)))["weight0"] == (7, 6)


def test_linear_forward_hand_computed() -> None:
    params = {"weight0": torch.tensor([[1.0, 2.0], [0.0, -1.0]]), "bias0": torch.tensor([0.5, 1.0])}
    out = forward(LinearModel(in_dim=2, out_dim=2), params, torch.tensor([3.0, 4.0]))
    assert out.tolist() == [11.5, -3.0]


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid"])
def test_mlp_forward_equals_torch_modules(activation: str) -> None:
    spec = MLPModel(in_dim=3, hidden=(4, 5), out_dim=2, activation=activation, seed=3)
    params = init_params(spec, DT)
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}[activation]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate([(3, 4), (4, 5), (5, 2)]):
        linear = nn.Linear(fan_in, fan_out).double()
        with torch.no_grad():
            linear.weight.copy_(params[f"weight{i}"])
            linear.bias.copy_(params[f"bias{i}"])
        layers += [linear, act] if i < 2 else [linear]
    x = torch.randn(6, 3, dtype=DT)
    torch.testing.assert_close(forward(spec, params, x), nn.Sequential(*layers)(x), rtol=1e-14, atol=1e-14)


_families = st.one_of(
    st.builds(LinearModel, in_dim=st.integers(1, 5), out_dim=st.integers(1, 3), init=st.just("random")),
    st.builds(
        MLPModel,
        in_dim=st.integers(1, 5),
        hidden=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
        activation=st.sampled_from(["relu", "tanh", "gelu", "sigmoid"]),
        out_dim=st.integers(1, 3),
    ),
    st.builds(
        ARModel,
        dim=st.integers(1, 3),
        lags=st.integers(1, 4),
        hidden=st.sampled_from([(), (4,)]),
        init=st.just("random"),
    ),
)


def _in_dim(spec: Model) -> int:
    return spec.lags * spec.dim if isinstance(spec, ARModel) else spec.in_dim


def _out_dim(spec: Model) -> int:
    return spec.dim if isinstance(spec, ARModel) else spec.out_dim


def _stack(spec: Model, rows: int) -> dict[str, Tensor]:
    """Different models per row (seed i), stacked on dimension 0."""
    per_row = [init_params(spec.model_copy(update={"seed": i}), DT) for i in range(rows)]
    return {k: torch.stack([p[k] for p in per_row]) for k in per_row[0]}


@settings(max_examples=40, deadline=None)
@given(spec=_families, rows=st.integers(1, 4))
def test_stacked_forward_equals_forward_per_row(spec: Model, rows: int) -> None:
    params = _stack(spec, rows)
    x = torch.randn(rows, _in_dim(spec), dtype=DT)
    out = stacked_forward(spec, params, x)
    assert out.shape == (rows, _out_dim(spec))
    for i in range(rows):
        row = forward(spec, {k: v[i] for k, v in params.items()}, x[i])
        torch.testing.assert_close(out[i], row, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "spec",
    [LinearModel(in_dim=3, out_dim=2, init="random"), MLPModel(in_dim=3, hidden=(4, 3), out_dim=2)],
    ids=["linear", "mlp"],
)
def test_func_grad_equals_autograd(spec: Model) -> None:
    params = init_params(spec, DT)
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)

    def loss(p: dict[str, Tensor]) -> Tensor:
        return (forward(spec, p, x) - y).square().mean()

    functional = torch.func.grad(loss)(params)
    module = FamilyModule(spec, DT)
    loss(dict(module.params.items())).backward()
    for name, g in functional.items():
        grad = module.params[name].grad
        assert grad is not None
        torch.testing.assert_close(g, grad, rtol=1e-13, atol=1e-14)
    # and vmap over stacked rows gives each row's own gradient
    stacked = _stack(spec, 3)
    batched = torch.func.vmap(torch.func.grad(loss))(stacked)
    for i in range(3):
        row = torch.func.grad(loss)({k: v[i] for k, v in stacked.items()})
        for name in row:
            torch.testing.assert_close(batched[name][i], row[name], rtol=1e-13, atol=1e-14)


def test_init_zeros_is_all_zeros() -> None:
    params = init_params(MLPModel(in_dim=3, hidden=(4,), init="zeros"), DT)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in params.values())


def test_init_random_is_seeded_and_bounded() -> None:
    spec = MLPModel(in_dim=9, hidden=(16,), out_dim=2, seed=5)
    a, b = init_params(spec, DT), init_params(spec, DT)
    other = init_params(spec.model_copy(update={"seed": 6}), DT)
    single = init_params(spec, torch.float32)
    for name in a:
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], other[name])
        assert torch.equal(single[name], a[name].float())  # the same draw at every dtype
        assert single[name].dtype == torch.float32
    # uniform(+-1/sqrt(fan_in)), fan_in of the layer: 9 for layer 0, 16 for layer 1
    assert a["weight0"].abs().max() <= 1 / 3
    assert a["bias1"].abs().max() <= 1 / 4
    assert a["weight0"].abs().max() > 1 / 3 * 0.8  # really spread over the interval


def test_init_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    init_params(MLPModel(in_dim=3, seed=1))
    assert torch.equal(torch.rand(1), expected)


def test_ar_features() -> None:
    # window of 3 observations of dim 2 (oldest first)
    window = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    level = ARModel(dim=2, lags=3, target="level")
    delta = ARModel(dim=2, lags=2, target="delta")
    assert level.window == 3
    assert delta.window == 3
    assert ar_features(level, window).tolist() == [1.0, 10.0, 2.0, 20.0, 4.0, 40.0]
    assert ar_features(delta, window).tolist() == [1.0, 10.0, 2.0, 20.0]
    # batched windows [rows, window, dim]
    rows = torch.stack([window, 2 * window])
    assert ar_features(delta, rows).shape == (2, 4)
    assert ar_features(delta, rows)[1].tolist() == [2.0, 20.0, 4.0, 40.0]


def test_family_module_is_a_trainable_module() -> None:
    spec = ARModel(dim=2, lags=3, hidden=(4,), init="random")
    module = FamilyModule(spec, DT)
    assert sorted(name for name, _ in module.named_parameters()) == [
        "params.bias0",
        "params.bias1",
        "params.weight0",
        "params.weight1",
    ]
    x = torch.randn(5, 6, dtype=DT)
    torch.testing.assert_close(module(x), forward(spec, init_params(spec, DT), x))
    module(x).sum().backward()
    assert all(p.grad is not None for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# Losses (models/losses.py): values per row and the prediction a client sees.
# ---------------------------------------------------------------------------------------------------------


def test_mse_per_row() -> None:
    out = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.zeros(2, 2)
    assert loss_per_row("mse", out, target).tolist() == [5.0, 0.0]


def test_huber_per_row_with_per_row_delta() -> None:
    out = torch.tensor([[0.5, 3.0], [0.5, 3.0]], dtype=DT)
    target = torch.zeros(2, 2, dtype=DT)
    # delta 1: [0.5 * 0.25, 1 * (3 - 0.5)] -> mean 1.3125; delta 4: [0.125, 4.5] -> mean 2.3125
    got = loss_per_row("huber", out, target, torch.tensor([1.0, 4.0], dtype=DT))
    torch.testing.assert_close(got, torch.tensor([1.3125, 2.3125], dtype=DT))
    assert loss_per_row("huber", out, target, 1.0).tolist() == pytest.approx([1.3125, 1.3125])


def test_bce_on_logits() -> None:
    logits = torch.tensor([[0.0], [2.0]], dtype=DT)
    target = torch.tensor([[1.0], [0.0]], dtype=DT)
    # -log(sigmoid(0)) = log 2; -log(1 - sigmoid(2)) = log(1 + e^2)
    expected = [math.log(2.0), math.log(1 + math.exp(2.0))]
    assert loss_per_row("bce", logits, target).tolist() == pytest.approx(expected, abs=1e-14)


def test_prediction_mapping() -> None:
    out = torch.tensor([[0.0], [-1.5]])
    assert prediction("mse", out) is out
    assert prediction("huber", out) is out
    assert prediction("bce", out).flatten().tolist() == pytest.approx([0.5, 1 / (1 + math.exp(1.5))])


def test_unknown_loss_raises() -> None:
    with pytest.raises(ValueError, match="loss"):
        loss_per_row("mae", torch.zeros(1, 1), torch.zeros(1, 1))  # type: ignore[arg-type]
