"""The functional core: fast path equals plain loop, stacked rows equal separate optimizers, the baselines'
math against torch's own optimizers, and the per-row statistics."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from trackin.models import functional as F
from trackin.models.families import forward, init_params
from trackin.models.specs import MLPModel
from trackin.models.trackin import TrackIn

DT = torch.float64


def _stacked(rows: int, shapes: list[tuple[int, ...]], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, *s, generator=gen, dtype=DT) for s in shapes]


SHAPES = [(3, 2), (3,), (1, 3)]

# (kwargs for F.trackin), one case per option; every case runs both kernels over several steps.
KERNEL_CASES: list[dict[str, Any]] = [
    {"beta_rule": rule, "debias": debias, "eta": eta, "eps_decay": 0.9}
    for rule in F.BETA_RULES
    for debias in (True, False)
    for eta in (0.0, 0.05)
] + [
    {"beta_rule": "cos", "debias": True, "eta": 0.0, "eps_decay": 0.9, "weight_decay": 0.1},
    {"beta_rule": "norm", "debias": True, "eta": 0.1, "eps_decay": 1.0, "max_grad_norm": 0.3},
    {"beta_rule": "constant", "debias": False, "eta": 0.0, "eps_decay": 0.9, "maximize": True},
    {
        "beta_rule": torch.tensor([0, 1, 2, 1]),
        "debias": torch.tensor([True, False, True, True]),
        "eta": torch.tensor([0.0, 0.1, 0.05, 0.0], dtype=DT),
        "eps_decay": torch.tensor([0.9, 0.5, 1.0, 0.0], dtype=DT),
        "lr": torch.tensor([0.1, 0.01, 0.05, 0.2], dtype=DT),
        "max_grad_norm": torch.tensor([0.5, float("inf"), 2.0, 1.0], dtype=DT),
        "weight_decay": torch.tensor([0.0, 0.1, 0.0, 0.01], dtype=DT),
    },
]


def _run_kernel(foreach: bool, options: dict[str, Any], steps: int = 6) -> list[Tensor]:
    rows = 4
    params = _stacked(rows, SHAPES, seed=0)
    momenta = [torch.zeros_like(p) for p in params]
    eps = [torch.zeros_like(p) for p in params]
    sq_avg = torch.zeros(rows, dtype=DT)
    step = torch.zeros(rows, dtype=torch.int64)
    hyper = {"lr": 0.05, "gamma": 0.8, "beta": 1.5, **options}
    for t in range(steps):
        grads = _stacked(rows, SHAPES, seed=100 + t)
        F.trackin(params, grads, momenta, eps, sq_avg, step, foreach=foreach, **hyper)
    return [*params, *momenta, *eps, sq_avg]


@pytest.mark.parametrize("options", KERNEL_CASES, ids=[str(i) for i in range(len(KERNEL_CASES))])
def test_foreach_kernel_equals_single_tensor_kernel(options: dict[str, Any]) -> None:
    single = _run_kernel(False, options)
    multi = _run_kernel(True, options)
    for a, b in zip(single, multi, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    # the case really moved the parameters
    assert not torch.equal(single[0], _stacked(4, SHAPES, seed=0)[0])


@settings(max_examples=25, deadline=None)
@given(
    lr=st.floats(1e-3, 0.5),
    gamma=st.floats(0.0, 0.99),
    beta=st.floats(0.0, 5.0),
    rule=st.sampled_from(F.BETA_RULES),
    debias=st.booleans(),
    eta=st.sampled_from([0.0, 0.01, 0.2]),
    eps_decay=st.floats(0.0, 1.0),
    clip=st.sampled_from([None, 0.1, 10.0]),
)
def test_foreach_equals_single_tensor_for_any_hyperparameters(
    lr: float,
    gamma: float,
    beta: float,
    rule: str,
    debias: bool,
    eta: float,
    eps_decay: float,
    clip: float | None,
) -> None:
    options = {
        "lr": lr,
        "gamma": gamma,
        "beta": beta,
        "beta_rule": rule,
        "debias": debias,
        "eta": eta,
        "eps_decay": eps_decay,
        "max_grad_norm": clip,
    }
    for a, b in zip(_run_kernel(False, options, 4), _run_kernel(True, options, 4), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# Stacked rows with per-row hyperparameters equal one TrackIn optimizer per model (the engine's contract).
# ---------------------------------------------------------------------------------------------------------

MLP = MLPModel(in_dim=3, hidden=(4,), out_dim=2, init="random")

ROWS: list[dict[str, Any]] = [
    {"lr": 0.05, "gamma": 0.9, "beta": 1.0, "beta_rule": "cos", "debias": True, "eta": 0.0, "eps_decay": 0.9},
    {
        "lr": 0.02,
        "gamma": 0.5,
        "beta": 2.0,
        "beta_rule": "norm",
        "debias": True,
        "eta": 0.05,
        "eps_decay": 0.8,
    },
    {"lr": 0.1, "gamma": 0.7, "beta": 0.5, "beta_rule": "constant", "debias": False, "eta": 0.0},
    {
        "lr": 0.03,
        "gamma": 0.95,
        "beta": 3.0,
        "beta_rule": "norm",
        "debias": False,
        "eta": 0.1,
        "eps_decay": 1.0,
    },
    {
        "lr": 0.05,
        "gamma": 0.8,
        "beta": 1.0,
        "beta_rule": "cos",
        "debias": False,
        "eta": 0.02,
        "eps_decay": 0.0,
    },
    {"lr": 0.05, "gamma": 0.9, "beta": 1.0, "beta_rule": "cos", "weight_decay": 0.05, "max_grad_norm": 0.2},
]


def _loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return (forward(MLP, params, x) - y).square().mean()


def _data(t: int, rows: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(rows, 5, 3, generator=gen, dtype=DT)
    y = torch.sin(x.sum(-1, keepdim=True) + 0.1 * t).expand(rows, 5, 2).contiguous()
    return x, y


def _column(key: str, default: Any, dtype: torch.dtype = DT) -> Tensor:
    return torch.tensor([row.get(key, default) for row in ROWS], dtype=dtype)


@pytest.mark.parametrize("foreach", [False, True])
def test_stacked_rows_equal_separate_trackin_optimizers(foreach: bool) -> None:
    """Per-row tensors for every hyperparameter, including rule codes and debias flags; gradients of the
    stacked models come from ``torch.func.vmap(grad)``, those of the separate ones from autograd."""
    rows = len(ROWS)
    models = []
    for i, options in enumerate(ROWS):
        spec = MLP.model_copy(update={"seed": i})
        params = {k: nn.Parameter(v) for k, v in init_params(spec, DT).items()}
        models.append((params, TrackIn(params.values(), **options)))
    names = list(models[0][0])
    stacked = {k: torch.stack([m[0][k].detach() for m in models]) for k in names}
    momenta = [torch.zeros_like(v) for v in stacked.values()]
    eps = [torch.zeros_like(v) for v in stacked.values()]
    sq_avg = torch.zeros(rows, dtype=DT)
    step = torch.zeros(rows, dtype=torch.int64)
    hyper: dict[str, Any] = {
        "lr": _column("lr", None),
        "gamma": _column("gamma", None),
        "beta": _column("beta", None),
        "beta_rule": torch.tensor([F.beta_rule_code(row["beta_rule"]) for row in ROWS]),
        "debias": _column("debias", True, torch.bool),
        "eta": _column("eta", 0.0),
        "eps_decay": _column("eps_decay", 0.9),
        "weight_decay": _column("weight_decay", 0.0),
        "max_grad_norm": _column("max_grad_norm", float("inf")),
    }
    grad_fn = torch.func.vmap(torch.func.grad(_loss))
    for t in range(15):
        x, y = _data(t, rows)
        for i, (params, opt) in enumerate(models):
            opt.zero_grad()
            _loss(params, x[i], y[i]).backward()
            opt.step()
        grads = grad_fn(stacked, x, y)
        stats = F.trackin(
            list(stacked.values()),
            [grads[k] for k in names],
            momenta,
            eps,
            sq_avg,
            step,
            foreach=foreach,
            **hyper,
        )
    for i, (params, opt) in enumerate(models):
        for k, name in enumerate(names):
            torch.testing.assert_close(stacked[name][i], params[name].detach(), rtol=0, atol=1e-10)
            state = opt.state[params[name]]
            torch.testing.assert_close(momenta[k][i], state["momentum"], rtol=0, atol=1e-10)
        torch.testing.assert_close(stats.beta[i], state["beta_t"], rtol=0, atol=1e-10)
    assert step.tolist() == [15] * rows
    # the rows differ from each other, so a row mix-up could not pass
    assert not torch.allclose(stacked["weight0"][0], stacked["weight0"][1])


# ---------------------------------------------------------------------------------------------------------
# Statistics and helpers.
# ---------------------------------------------------------------------------------------------------------


def test_step_stats_per_row() -> None:
    params = [torch.zeros(2, 2, dtype=DT), torch.zeros(2, 1, dtype=DT)]
    grads = [torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=DT), torch.tensor([[4.0], [0.0]], dtype=DT)]
    momenta = [torch.zeros_like(p) for p in params]
    eps = [torch.zeros_like(p) for p in params]
    stats = F.trackin(
        params,
        grads,
        momenta,
        eps,
        torch.zeros(2, dtype=DT),
        torch.zeros(2, dtype=torch.int64),
        lr=0.1,
        gamma=0.5,
        beta=2.0,
        beta_rule="constant",
        debias=True,
        eta=0.1,
        eps_decay=0.9,
        max_grad_norm=1.0,
    )
    assert stats.grad_norm.tolist() == [5.0, 0.0]  # before clipping
    assert stats.beta.tolist() == [2.0, 2.0]
    # eps = -0.1 * clipped g = -0.1 * [0.6, 0.8]: norm 0.1
    torch.testing.assert_close(stats.eps_norm, torch.tensor([0.1, 0.0], dtype=DT))
    # a zero gradient leaves the row alone (no NaN from 0 / 0 in the clipping or the cosine)
    assert torch.equal(params[0][1], torch.zeros(2, dtype=DT))


def test_row_sq_norm_reduces_per_row_over_all_tensors() -> None:
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    b = torch.tensor([[[2.0]], [[3.0]]])
    assert F.row_sq_norm([a, b]).tolist() == [9.0, 10.0]


def test_beta_rule_codes() -> None:
    assert [F.beta_rule_code(r) for r in ("constant", "cos", "norm")] == [0, 1, 2]
    with pytest.raises(ValueError, match="beta_rule"):
        F.beta_rule_code("sign")


# ---------------------------------------------------------------------------------------------------------
# The baselines' math against torch.optim (an independent implementation).
# ---------------------------------------------------------------------------------------------------------


def _torch_reference(
    make: Any, rows: int, steps: int, **kwargs: Any
) -> tuple[list[Tensor], list[list[Tensor]]]:
    """Each row as its own model under a torch.optim optimizer; returns final params and the gradients."""
    start = _stacked(rows, SHAPES, seed=1)
    grads_seq = [_stacked(rows, SHAPES, seed=200 + t) for t in range(steps)]
    final = []
    for i in range(rows):
        ps = [nn.Parameter(s[i].clone()) for s in start]
        opt = make(ps, **kwargs)
        for grads in grads_seq:
            for p, g in zip(ps, grads, strict=True):
                p.grad = g[i].clone()
            opt.step()
        final.append(ps)
    return [torch.stack([f[k].detach() for f in final]) for k in range(len(SHAPES))], grads_seq


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.5, "weight_decay": 0.1},
        {"momentum": 0.9, "maximize": True},
    ],
)
def test_sgd_equals_torch_sgd_without_dampening_and_debias(kwargs: dict[str, Any]) -> None:
    expected, grads_seq = _torch_reference(torch.optim.SGD, 3, 5, lr=0.1, foreach=False, **kwargs)
    params = _stacked(3, SHAPES, seed=1)
    momenta = [torch.zeros_like(p) for p in params] if kwargs["momentum"] > 0 else None
    step = torch.zeros(3, dtype=torch.int64)
    for grads in grads_seq:
        F.sgd(params, grads, momenta, step, lr=0.1, dampening=0.0, debias=False, **kwargs)
    for a, b in zip(params, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_sgd_debiased_ewma_hand_computed() -> None:
    """mu = d = 0.5 with debias follows the debiased EWMA of g. g = 4, then 2: m = 2, 2; mhat = 4, 8/3."""
    p = [torch.tensor([[1.0]], dtype=DT)]
    m = [torch.zeros_like(p[0])]
    step = torch.zeros(1, dtype=torch.int64)
    for g in (4.0, 2.0):
        F.sgd(p, [torch.tensor([[g]], dtype=DT)], m, step, lr=0.1, momentum=0.5, dampening=0.5, debias=True)
    torch.testing.assert_close(p[0], torch.tensor([[1.0 - 0.4 - 0.1 * 8 / 3]], dtype=DT), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1}, {"maximize": True}])
def test_adam_equals_torch_adam(kwargs: dict[str, Any]) -> None:
    expected, grads_seq = _torch_reference(
        torch.optim.Adam, 3, 6, lr=0.01, betas=(0.8, 0.95), eps=1e-6, foreach=False, **kwargs
    )
    params = _stacked(3, SHAPES, seed=1)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    step = torch.zeros(3, dtype=torch.int64)
    for grads in grads_seq:
        F.adam(params, grads, m, v, step, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, **kwargs)
    for a, b in zip(params, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
