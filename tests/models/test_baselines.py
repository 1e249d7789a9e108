"""The baseline optimizers: torch.optim equivalence, hand-computed debiased steps, the Optimizer contract, and
groups as rows of the functional core."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from trackin.models import functional as F
from trackin.models.baselines import AdamBaseline, DebiasedSGD
from trackin.models.specs import AdamSpec, SGDSpec

DT = torch.float64


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(8, 3, generator=gen, dtype=DT)
        opt.zero_grad()
        (model(x) - x.sum(1, keepdim=True)).square().mean().backward()
        opt.step()


PAIRS: list[tuple[str, Any, dict[str, Any], Any, dict[str, Any]]] = [
    ("sgd", DebiasedSGD, {"lr": 0.05}, torch.optim.SGD, {"lr": 0.05}),
    ("momentum", DebiasedSGD, {"lr": 0.02, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    (
        "momentum wd maximize",
        DebiasedSGD,
        {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
    ),
    ("adam", AdamBaseline, {"lr": 0.01}, torch.optim.Adam, {"lr": 0.01}),
    (
        "adam options",
        AdamBaseline,
        {"lr": 0.01, "beta1": 0.5, "beta2": 0.9, "eps": 1e-4, "weight_decay": 0.1},
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-4, "weight_decay": 0.1},
    ),
]


@pytest.mark.parametrize(
    ("ours", "kw", "theirs", "their_kw"), [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS]
)
def test_equals_torch_optim(ours: Any, kw: dict[str, Any], theirs: Any, their_kw: dict[str, Any]) -> None:
    model, twin = _model(), _model()
    _train(model, ours(model.parameters(), **kw), range(10))
    _train(twin, theirs(twin.parameters(), foreach=False, **their_kw), range(10))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def _steps(opt_factory: Any, grads: list[float], start: float = 1.0) -> float:
    p = nn.Parameter(torch.tensor([start], dtype=DT))
    opt = opt_factory([p])
    for g in grads:
        p.grad = torch.tensor([g], dtype=DT)
        opt.step()
    return float(p.detach())


def test_debiased_ewma_momentum_hand_computed() -> None:
    # mu = d = 0.5: m_1 = 2 (g = 4), mhat_1 = 4; m_2 = 0.5 * 2 + 0.5 * 2 = 2 (g = 2), mhat_2 = 2 / 0.75.
    got = _steps(lambda p: DebiasedSGD(p, lr=0.1, momentum=0.5, dampening=0.5, debias=True), [4.0, 2.0])
    assert got == pytest.approx(1.0 - 0.1 * 4 - 0.1 * 2 / 0.75, abs=1e-14)


def test_momentum_starts_at_zero_unlike_torch_sgd() -> None:
    # dampening 0.5 without debias: m_1 = 0.5 * g = 2 (torch.optim.SGD would take m_1 = g = 4).
    ours = _steps(lambda p: DebiasedSGD(p, lr=0.1, momentum=0.9, dampening=0.5), [4.0])
    theirs = _steps(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), [4.0])
    assert ours == pytest.approx(0.8, abs=1e-14)
    assert theirs == pytest.approx(0.6, abs=1e-14)


def test_plain_sgd_keeps_no_momentum_and_ignores_dampening() -> None:
    p = nn.Parameter(torch.tensor([1.0], dtype=DT))
    opt = DebiasedSGD([p], lr=0.1, momentum=0.0, dampening=0.9, debias=True)
    p.grad = torch.tensor([2.0], dtype=DT)
    opt.step()
    assert float(p.detach()) == pytest.approx(0.8, abs=1e-14)
    assert set(opt.state[p]) == {"step"}


def test_group_norm_clipping() -> None:
    """Each group is one row: clipping uses the norm over all the group's tensors ([3] and [4]: 5)."""
    a = nn.Parameter(torch.tensor([0.0], dtype=DT))
    b = nn.Parameter(torch.tensor([0.0], dtype=DT))
    opt = DebiasedSGD([a, b], lr=1.0, max_grad_norm=1.0)
    a.grad, b.grad = torch.tensor([3.0], dtype=DT), torch.tensor([4.0], dtype=DT)
    opt.step()
    assert (float(a.detach()), float(b.detach())) == pytest.approx((-0.6, -0.8), abs=1e-14)


def test_groups_with_own_hyperparameters_equal_separate_optimizers() -> None:
    model, twin = _model(), _model()
    params, twin_params = list(model.parameters()), list(twin.parameters())
    grouped = AdamBaseline([{"params": params[:2], "lr": 0.05, "max_grad_norm": 0.1}, {"params": params[2:]}])
    separate = [AdamBaseline(twin_params[:2], lr=0.05, max_grad_norm=0.1), AdamBaseline(twin_params[2:])]
    for t in range(8):
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(8, 3, generator=gen, dtype=DT)
        for m in (model, twin):
            m.zero_grad()
            (m(x) - x.sum(1, keepdim=True)).square().mean().backward()
        grouped.step()
        for opt in separate:
            opt.step()
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (DebiasedSGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.9, "debias": True}),
        (AdamBaseline, {"lr": 0.01, "max_grad_norm": 1.0}),
    ],
)
def test_state_dict_round_trip_resumes_bit_for_bit(cls: Any, kw: dict[str, Any]) -> None:
    model = _model()
    opt = cls(model.parameters(), **kw)
    _train(model, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, range(5, 12))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=7)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters())
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, range(5, 12))
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    for state in opt2.state.values():
        assert isinstance(state["step"], Tensor)
        assert state["step"].dtype == torch.int64
        assert int(state["step"]) == 12


def test_closure_and_params_without_grad() -> None:
    used = nn.Parameter(torch.tensor([1.0], dtype=DT))
    unused = nn.Parameter(torch.tensor([5.0], dtype=DT))
    opt = AdamBaseline([used, unused], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (used * 3.0).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == pytest.approx(3.0)
    assert float(used.detach()) == pytest.approx(0.9, abs=1e-6)  # Adam's first step is lr * sign(g)
    assert float(unused.detach()) == 5.0
    assert unused not in opt.state


@pytest.mark.parametrize("cls", [DebiasedSGD, AdamBaseline])
def test_step_makes_no_host_sync(cls: Any) -> None:
    """On the meta device every value is unknown, so a host sync would raise."""
    p = nn.Parameter(torch.empty(3, device="meta"))
    kw = {"momentum": 0.9, "debias": True} if cls is DebiasedSGD else {}
    opt = cls([p], lr=0.1, max_grad_norm=1.0, weight_decay=0.1, **kw)
    for _ in range(2):
        p.grad = torch.empty(3, device="meta")
        opt.step()


def test_specs_map_onto_constructors() -> None:
    """Spec fields are the constructors' keywords, and the spec defaults are the class defaults."""
    p = nn.Parameter(torch.zeros(1))
    sgd = DebiasedSGD([p], **SGDSpec(momentum=0.9).model_dump(exclude={"name"}))
    adam = AdamBaseline([p], **AdamSpec(beta2=0.99).model_dump(exclude={"name"}))
    assert sgd.param_groups[0]["momentum"] == 0.9
    assert adam.param_groups[0]["beta2"] == 0.99
    assert DebiasedSGD([p]).defaults["lr"] == SGDSpec().lr
    assert AdamBaseline([p]).defaults["lr"] == AdamSpec().lr


INVALID: list[tuple[Any, dict[str, Any], str]] = [
    (DebiasedSGD, {"lr": 0.0}, "lr"),
    (DebiasedSGD, {"lr": math.nan}, "lr"),
    (DebiasedSGD, {"momentum": 1.0}, "momentum"),
    (DebiasedSGD, {"momentum": -0.1}, "momentum"),
    (DebiasedSGD, {"dampening": 1.5}, "dampening"),
    (DebiasedSGD, {"weight_decay": -1.0}, "weight_decay"),
    (DebiasedSGD, {"max_grad_norm": -1.0}, "max_grad_norm"),
    (AdamBaseline, {"lr": -0.1}, "lr"),
    (AdamBaseline, {"beta1": 1.0}, "beta1"),
    (AdamBaseline, {"beta2": -0.5}, "beta2"),
    (AdamBaseline, {"eps": 0.0}, "eps"),
    (AdamBaseline, {"max_grad_norm": 0.0}, "max_grad_norm"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"), INVALID, ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(INVALID)]
)
def test_invalid_arguments_raise_value_error_naming_them(cls: Any, kwargs: dict[str, Any], name: str) -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=rf"^Invalid {name}: .*allowed"):
        cls([p], **{"lr": 0.1, **kwargs})
    with pytest.raises(ValueError, match=rf"^Invalid {name}: "):
        cls([{"params": [p], **kwargs}], lr=0.1)


def test_each_group_is_one_row_of_the_core() -> None:
    """The class and the core on one stacked row take the same step."""
    p = nn.Parameter(torch.tensor([1.0, -1.0], dtype=DT))
    opt = DebiasedSGD([p], lr=0.1, momentum=0.8, dampening=0.2, debias=True, weight_decay=0.01)
    row, m = [torch.tensor([[1.0, -1.0]], dtype=DT)], [torch.zeros(1, 2, dtype=DT)]
    step = torch.zeros(1, dtype=torch.int64)
    for g in ([1.0, 2.0], [-0.5, 3.0], [2.0, 0.0]):
        p.grad = torch.tensor(g, dtype=DT)
        opt.step()
        F.sgd(
            row,
            [p.grad.unsqueeze(0)],
            m,
            step,
            lr=0.1,
            momentum=0.8,
            dampening=0.2,
            debias=True,
            weight_decay=0.01,
        )
    assert torch.equal(p.detach(), row[0][0])


@pytest.mark.parametrize("cls", [DebiasedSGD, AdamBaseline])
def test_late_parameter_joins_the_group_step_count(cls: Any) -> None:
    """The group is one row with one step count; a parameter whose first gradient comes late joins it."""
    late = nn.Parameter(torch.zeros(2, dtype=DT))
    early = nn.Parameter(torch.zeros(1, dtype=DT))
    opt = cls([late, early], lr=0.1)
    for t in range(4):
        late.grad = None if t < 2 else torch.ones(2, dtype=DT)
        early.grad = torch.ones(1, dtype=DT)
        opt.step()
    assert int(opt.state[late]["step"]) == int(opt.state[early]["step"]) == 4
