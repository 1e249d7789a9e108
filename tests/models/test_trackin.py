"""The TrackIn optimizer class: hand-computed steps, a plain-float reference, and the Optimizer contract."""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from trackin.models.trackin import TrackIn

# ---------------------------------------------------------------------------------------------------------
# Hand-computed steps: theta = [1, 2], g = [3, 4] (||g|| = 5), lr = 0.1, gamma = 0.5, beta = 1.
# Worked by hand (docs/trackin.md has the update); kappa = (1 - 0.5) / (1 + 0.5) = 1/3.
# ---------------------------------------------------------------------------------------------------------

G = [3.0, 4.0]
BASE: dict[str, Any] = {"lr": 0.1, "gamma": 0.5, "beta": 1.0}

HAND_CASES: list[tuple[str, dict[str, Any], list[list[float]], list[float]]] = [
    # cos: s_1 = 0, so step 1 is plain SGD: [1, 2] - 0.1 [3, 4].
    ("cos first step", {"beta_rule": "cos"}, [G], [0.7, 1.6]),
    # step 2: cos(g, m_1) = 1; m_2 = [2.25, 3], mhat = m_2 / 0.75 = [3, 4];
    # [0.7, 1.6] - 0.1 ([3, 4] + [3, 4]).
    ("cos agrees", {"beta_rule": "cos"}, [G, G], [0.1, 0.8]),
    # without debias mhat = [2.25, 3]: [0.7 - 0.525, 1.6 - 0.7].
    ("cos agrees no debias", {"beta_rule": "cos", "debias": False}, [G, G], [0.175, 0.9]),
    # the target turns: g_2 = -g_1, cos = -1, s = 0: plain step back to [1, 2].
    ("cos turns", {"beta_rule": "cos"}, [G, [-3.0, -4.0]], [1.0, 2.0]),
    # constant, debiased: mhat_1 = g: [1, 2] - 0.1 (2 g).
    ("constant", {"beta_rule": "constant"}, [G], [0.4, 1.2]),
    # constant, biased: m_1 = [1.5, 2]: [1 - 0.45, 2 - 0.6].
    ("constant no debias", {"beta_rule": "constant", "debias": False}, [G], [0.55, 1.4]),
    # norm, debiased: mhat_1 = g, vhat_1 = 25, rho = 1, s = 1.
    ("norm", {"beta_rule": "norm"}, [G], [0.4, 1.2]),
    # norm, biased: ||m_1||^2 = 6.25, v_1 = 12.5, rho = 1/2, s = (1/2 - 1/3) / (2/3) = 1/4;
    # [1, 2] - 0.1 ([3, 4] + 0.25 [1.5, 2]).
    ("norm no debias", {"beta_rule": "norm", "debias": False}, [G], [0.6625, 1.55]),
    # norm step 2: vhat = 18.75 / 0.75 = 25, ||mhat||^2 = 25, s = 1: [0.4, 1.2] - 0.1 (2 g).
    ("norm two steps", {"beta_rule": "norm"}, [G, G], [-0.2, 0.4]),
    # eps: eps_1 = -0.01 g = [-0.03, -0.04]; [0.7, 1.6] + eps_1.
    ("eps", {"beta_rule": "cos", "eta": 0.01, "eps_decay": 0.5}, [G], [0.67, 1.56]),
    # eps_2 = 0.5 eps_1 - 0.01 g = [-0.045, -0.06]; s = 1 as above: [0.67 - 0.6 - 0.045, 1.56 - 0.8 - 0.06].
    ("eps two steps", {"beta_rule": "cos", "eta": 0.01, "eps_decay": 0.5}, [G, G], [0.025, 0.7]),
    # weight decay: g = [3, 4] + 0.1 [1, 2] = [3.1, 4.2].
    ("weight decay", {"beta_rule": "cos", "weight_decay": 0.1}, [G], [0.69, 1.58]),
    # clipping to norm 1: g = [0.6, 0.8].
    ("clipping", {"beta_rule": "cos", "max_grad_norm": 1.0}, [G], [0.94, 1.92]),
    # clipping above the norm changes nothing.
    ("no clipping", {"beta_rule": "cos", "max_grad_norm": 10.0}, [G], [0.7, 1.6]),
    ("maximize", {"beta_rule": "cos", "maximize": True}, [G], [1.3, 2.4]),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    ("options", "grads", "expected"), [c[1:] for c in HAND_CASES], ids=[c[0] for c in HAND_CASES]
)
def test_hand_computed(
    options: dict[str, Any], grads: list[list[float]], expected: list[float], foreach: bool
) -> None:
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = TrackIn([theta], **{**BASE, **options}, foreach=foreach)
    for g in grads:
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(
        theta.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12
    )


# ---------------------------------------------------------------------------------------------------------
# A plain-Python reference of the update (floats, no torch), over several steps and two tensors per group.
# ---------------------------------------------------------------------------------------------------------


def reference_trackin(
    theta: list[float],
    grads: list[list[float]],
    *,
    lr: float,
    gamma: float,
    beta: float,
    beta_rule: str,
    debias: bool = True,
    eta: float = 0.0,
    eps_decay: float = 1.0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    maximize: bool = False,
) -> list[float]:
    """TrackIn on a flat list (all the group's tensors concatenated), written from the issue's equations."""
    theta = list(theta)
    n = len(theta)
    m, e, v = [0.0] * n, [0.0] * n, 0.0
    for t, raw in enumerate(grads, start=1):
        g = [-x if maximize else x for x in raw]
        g = [x + weight_decay * p for x, p in zip(g, theta, strict=True)]
        norm = math.sqrt(sum(x * x for x in g))
        if max_grad_norm is not None and norm > max_grad_norm:
            g = [x * max_grad_norm / norm for x in g]
        g_sq = sum(x * x for x in g)
        m_sq = sum(x * x for x in m)
        dot = sum(x * y for x, y in zip(g, m, strict=True))
        cos = dot / math.sqrt(g_sq * m_sq) if g_sq * m_sq > 0 else 0.0
        m = [gamma * a + (1 - gamma) * x for a, x in zip(m, g, strict=True)]
        v = gamma * v + (1 - gamma) * g_sq
        bias = 1 - gamma**t if debias else 1.0
        mhat = [a / bias for a in m]
        if beta_rule == "constant":
            s = 1.0
        elif beta_rule == "cos":
            s = max(0.0, cos)
        else:
            rho = sum(a * a for a in mhat) / (v / bias)
            kappa = (1 - gamma) / (1 + gamma)
            s = min(1.0, max(0.0, (rho - kappa) / (1 - kappa)))
        if eta > 0:
            e = [eps_decay * a - eta * x for a, x in zip(e, g, strict=True)]
        theta = [p - lr * (x + beta * s * mh) + a for p, x, mh, a in zip(theta, g, mhat, e, strict=True)]
    return theta


OPTIONS: list[dict[str, Any]] = [
    {"beta_rule": rule, "debias": debias, "eta": eta, "eps_decay": 0.8}
    for rule in ("constant", "cos", "norm")
    for debias in (True, False)
    for eta in (0.0, 0.03)
] + [
    {"beta_rule": "norm", "weight_decay": 0.05},
    {"beta_rule": "cos", "max_grad_norm": 0.5},
    {"beta_rule": "constant", "max_grad_norm": 0.5, "weight_decay": 0.1, "maximize": True},
    {"beta_rule": "norm", "eta": 0.1, "eps_decay": 1.0, "max_grad_norm": 1.0},
]


def _grad_sequence(steps: int, seed: int) -> list[list[float]]:
    """A drifting gradient sequence (trend plus noise, with a sign change) over 5 coordinates."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(steps, 5, generator=gen, dtype=torch.float64)
    trend = torch.linspace(1.0, -0.5, steps, dtype=torch.float64).unsqueeze(1)
    return (trend + 0.5 * noise).tolist()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_matches_plain_reference(options: dict[str, Any], foreach: bool) -> None:
    """Two tensors (a 2x2 weight and a bias) in one group: norms and cosines are taken over both."""
    grads = _grad_sequence(12, seed=3)
    start = [0.5, -1.0, 0.25, 2.0, 1.5]
    weight = nn.Parameter(torch.tensor(start[:4], dtype=torch.float64).view(2, 2))
    bias = nn.Parameter(torch.tensor(start[4:], dtype=torch.float64))
    hyper = {"lr": 0.05, "gamma": 0.7, "beta": 1.5, **options}
    opt = TrackIn([weight, bias], **hyper, foreach=foreach)
    for g in grads:
        weight.grad = torch.tensor(g[:4], dtype=torch.float64).view(2, 2)
        bias.grad = torch.tensor(g[4:], dtype=torch.float64)
        opt.step()
    expected = reference_trackin(start, grads, **hyper)
    got = torch.cat([weight.detach().flatten(), bias.detach()])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# The torch.optim.Optimizer contract.
# ---------------------------------------------------------------------------------------------------------


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _batch(t: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    return x, x.sum(1, keepdim=True) * (1 + 0.01 * t)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        x, y = _batch(t)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("options", [{"beta_rule": "norm", "eta": 0.05}, {"beta_rule": "cos"}, {}])
def test_state_dict_round_trip_resumes_bit_for_bit(options: dict[str, Any]) -> None:
    model = _model()
    opt = TrackIn(model.parameters(), lr=0.03, **options)
    _train(model, opt, range(7))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, range(7, 15))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = TrackIn(resumed.parameters(), lr=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, range(7, 15))

    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_old_state_dict_without_new_options_loads() -> None:
    model = _model()
    opt = TrackIn(model.parameters(), lr=0.03)
    _train(model, opt, range(2))
    state = copy.deepcopy(opt.state_dict())
    for group in state["param_groups"]:
        for key in ("maximize", "foreach", "max_grad_norm"):
            del group[key]
    opt2 = TrackIn(model.parameters(), lr=0.03)
    opt2.load_state_dict(state)
    _train(model, opt2, range(2, 4))
    assert opt2.param_groups[0]["maximize"] is False
    assert opt2.param_groups[0]["max_grad_norm"] is None


def test_param_groups_are_independent_rows() -> None:
    """Two groups with their own hyperparameters step exactly as two separate optimizers."""
    model, twin = _model(), _model()
    first = {"lr": 0.05, "beta_rule": "cos", "gamma": 0.8}
    second = {"lr": 0.01, "beta_rule": "norm", "gamma": 0.95, "eta": 0.02, "max_grad_norm": 0.1}
    params = list(model.parameters())
    twin_params = list(twin.parameters())
    grouped = TrackIn([{"params": params[:2], **first}, {"params": params[2:], **second}], beta=2.0)
    separate = [
        TrackIn(twin_params[:2], beta=2.0, **first),
        TrackIn(twin_params[2:], beta=2.0, **second),
    ]
    for t in range(10):
        x, y = _batch(t)
        for m in (model, twin):
            m.zero_grad()
            (m(x) - y).square().mean().backward()
        grouped.step()
        for opt in separate:
            opt.step()
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)
    # the groups really behaved differently: per-group beta_t and eps state
    assert "eps" not in grouped.state[params[0]]
    assert "eps" in grouped.state[params[2]]
    assert not torch.equal(grouped.state[params[0]]["beta_t"], grouped.state[params[2]]["beta_t"])


def test_closure_is_called_once_and_its_loss_returned() -> None:
    model, twin = _model(), _model()
    opt, twin_opt = TrackIn(model.parameters(), lr=0.05), TrackIn(twin.parameters(), lr=0.05)
    x, y = _batch(0)
    calls = []

    def closure() -> float:
        calls.append(1)
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return float(loss.detach())

    loss = opt.step(closure)
    twin_loss = (twin(x) - y).square().mean()
    twin_loss.backward()
    twin_opt.step()
    assert calls == [1]
    assert loss == pytest.approx(float(twin_loss.detach()))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_params_without_grad_are_skipped() -> None:
    used = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    unused = nn.Parameter(torch.tensor([5.0], dtype=torch.float64))
    alone = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = TrackIn([used, unused], lr=0.1, beta_rule="norm", eta=0.1)
    ref = TrackIn([alone], lr=0.1, beta_rule="norm", eta=0.1)
    for _ in range(3):
        used.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
        alone.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
        opt.step()
        ref.step()
    assert torch.equal(unused.detach(), torch.tensor([5.0], dtype=torch.float64))
    assert unused not in opt.state
    assert torch.equal(used, alone)


def test_maximize_equals_minimizing_the_negated_gradient() -> None:
    a = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    b = nn.Parameter(a.detach().clone())
    up = TrackIn([a], lr=0.1, beta_rule="norm", eta=0.05, maximize=True)
    down = TrackIn([b], lr=0.1, beta_rule="norm", eta=0.05)
    for g in _grad_sequence(6, seed=5):
        a.grad = torch.tensor(g[:3], dtype=torch.float64)
        b.grad = -a.grad
        up.step()
        down.step()
    assert torch.equal(a, b)


def test_step_count_is_an_int_tensor_per_param() -> None:
    model = _model()
    opt = TrackIn(model.parameters(), lr=0.05)
    _train(model, opt, range(3))
    for state in opt.state.values():
        assert isinstance(state["step"], Tensor)
        assert state["step"].dtype == torch.int64
        assert int(state["step"]) == 3


@pytest.mark.parametrize("rule", ["constant", "cos", "norm"])
def test_step_makes_no_host_sync(rule: str) -> None:
    """On the meta device every value is unknown, so any host sync (``.item()``, ``bool(t)``) would raise."""
    weight = nn.Parameter(torch.empty(3, 2, device="meta"))
    bias = nn.Parameter(torch.empty(3, device="meta"))
    opt = TrackIn([weight, bias], lr=0.1, beta_rule=rule, eta=0.1, weight_decay=0.1, max_grad_norm=1.0)
    for _ in range(2):
        weight.grad = torch.empty(3, 2, device="meta")
        bias.grad = torch.empty(3, device="meta")
        opt.step()
    assert opt.state[weight]["step"].device.type == "meta"


def test_zero_grad_clears_grads() -> None:
    model = _model()
    opt = TrackIn(model.parameters(), lr=0.05)
    _train(model, opt, range(1))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0.0}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"gamma": 1.0}, "gamma"),
    ({"gamma": -0.1}, "gamma"),
    ({"beta": -0.5}, "beta"),
    ({"beta_rule": "adaptive"}, "beta_rule"),
    ({"eta": -0.01}, "eta"),
    ({"eps_decay": 1.5}, "eps_decay"),
    ({"eps_decay": -0.1}, "eps_decay"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
]


@pytest.mark.parametrize(
    ("kwargs", "name"), INVALID, ids=[f"{n}={v}" for (k, n) in INVALID for v in k.values()]
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs: dict[str, Any], name: str) -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=rf"^Invalid {name}: .*allowed"):
        TrackIn([p], **{"lr": 0.1, **kwargs})
    with pytest.raises(ValueError, match=rf"^Invalid {name}: "):
        TrackIn([{"params": [p], **kwargs}], lr=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_norm_rule_with_gamma_zero_takes_plain_gradient_steps(clip: float | None, dtype: torch.dtype) -> None:
    """gamma = 0 makes kappa = 1 and rho = 1: the norm rule has no signal-to-noise estimate (0 / 0), and s is
    defined as 0 then, so each step is a plain (clipped) gradient step rather than one decided by rounding."""
    gen = torch.Generator().manual_seed(11)
    theta = nn.Parameter(torch.zeros(5, dtype=dtype))
    opt = TrackIn([theta], lr=0.1, gamma=0.0, beta=1.0, beta_rule="norm", max_grad_norm=clip)
    for _ in range(200):
        theta.grad = 10 * torch.randn(5, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
        assert float(opt.state[theta]["beta_t"]) == 0.0


@pytest.mark.parametrize("rule", ["cos", "norm"])
def test_param_whose_first_grad_comes_late_joins_the_group_count(rule: str) -> None:
    """The step count t and the norm EWMA belong to the group. A parameter whose first gradient arrives at
    step 2 starts from the group's t (its momentum from zero), which is exactly a run in which it had a zero
    gradient at step 1 (zero adds nothing to the group's norms and cosines)."""
    runs = []
    for first_grad in (None, 0.0):
        late = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
        early = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        opt = TrackIn([late, early], lr=0.1, gamma=0.5, beta_rule=rule, eta=0.05)
        for t, g in enumerate(_grad_sequence(6, seed=2)):
            late.grad = torch.tensor(g[:2], dtype=torch.float64)
            if t == 0:
                late.grad = None if first_grad is None else torch.zeros(2, dtype=torch.float64)
            early.grad = torch.tensor(g[2:3], dtype=torch.float64)
            opt.step()
        assert int(opt.state[late]["step"]) == int(opt.state[early]["step"]) == 6
        runs.append(torch.cat([late.detach(), early.detach()]))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-14)
