"""Runners of ``python -m bench.accuracy``: each method on all seeds and grid points as stacked rows; each
returns the cumulative squared error per (grid point, task, seed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from bench.drift_tasks import DIM, DT, NOISE, TASKS, Setting
from trackin.models import functional as F
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

__all__ = ["run_adam", "run_engine", "run_filter", "run_sgd", "run_trackin"]

Update = Callable[[list[Tensor], list[Tensor]], None]


def _gradient_run(x: Tensor, y: Tensor, points: int, update: Update) -> Tensor:
    """Prequential run of the linear model on ``points * streams`` stacked rows (row = point, stream)."""
    steps, streams, dim = x.shape
    rows = points * streams
    stream = torch.arange(rows) % streams
    weight, bias = torch.zeros(rows, 1, dim, dtype=DT), torch.zeros(rows, 1, dtype=DT)
    cum = torch.zeros(rows, dtype=DT)
    for t in range(steps):
        xt, yt = x[t, stream], y[t, stream]
        err = (weight[:, 0] * xt).sum(-1) + bias[:, 0] - yt
        cum += err.square()
        two_err = 2 * err.unsqueeze(1)
        update([weight, bias], [(two_err * xt).unsqueeze(1), two_err])
    return cum.nan_to_num(nan=math.inf).view(points, len(TASKS), -1)


def _column(points: Sequence[Setting], key: str, streams: int, dtype: torch.dtype = DT) -> Tensor:
    return torch.tensor([p[key] for p in points], dtype=dtype).repeat_interleave(streams)


def run_trackin(x: Tensor, y: Tensor, points: Sequence[Setting]) -> Tensor:
    streams = x.shape[1]
    rows = len(points) * streams
    momenta = [torch.zeros(rows, 1, DIM, dtype=DT), torch.zeros(rows, 1, dtype=DT)]
    eps = [torch.zeros_like(m) for m in momenta]
    sq_avg, step = torch.zeros(rows, dtype=DT), torch.zeros(rows, dtype=torch.int64)
    lr, gamma, beta, eta, eps_decay = (
        _column(points, k, streams) for k in ("lr", "gamma", "beta", "eta", "eps_decay")
    )
    rule = torch.tensor([F.beta_rule_code(p["beta_rule"]) for p in points]).repeat_interleave(streams)
    debias = _column(points, "debias", streams, torch.bool)

    def update(params: list[Tensor], grads: list[Tensor]) -> None:
        F.trackin(
            params,
            grads,
            momenta,
            eps,
            sq_avg,
            step,
            lr=lr,
            gamma=gamma,
            beta=beta,
            beta_rule=rule,
            debias=debias,
            eta=eta,
            eps_decay=eps_decay,
        )

    return _gradient_run(x, y, len(points), update)


def run_sgd(x: Tensor, y: Tensor, points: Sequence[Setting]) -> Tensor:
    streams = x.shape[1]
    rows = len(points) * streams
    momenta = [torch.zeros(rows, 1, DIM, dtype=DT), torch.zeros(rows, 1, dtype=DT)]
    step = torch.zeros(rows, dtype=torch.int64)
    lr, momentum, dampening = (_column(points, k, streams) for k in ("lr", "momentum", "dampening"))
    debias = _column(points, "debias", streams, torch.bool)

    def update(params: list[Tensor], grads: list[Tensor]) -> None:
        F.sgd(params, grads, momenta, step, lr=lr, momentum=momentum, dampening=dampening, debias=debias)

    return _gradient_run(x, y, len(points), update)


def run_adam(x: Tensor, y: Tensor, points: Sequence[Setting]) -> Tensor:
    streams = x.shape[1]
    rows = len(points) * streams
    m = [torch.zeros(rows, 1, DIM, dtype=DT), torch.zeros(rows, 1, dtype=DT)]
    v = [torch.zeros_like(a) for a in m]
    step = torch.zeros(rows, dtype=torch.int64)
    lr = _column(points, "lr", streams)

    def update(params: list[Tensor], grads: list[Tensor]) -> None:
        F.adam(params, grads, m, v, step, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8)

    return _gradient_run(x, y, len(points), update)


def run_filter(x: Tensor, y: Tensor, points: Sequence[Setting]) -> Tensor:
    """Kalman filter on ``[x, 1]`` with prior N(0, I) and noise variance NOISE^2. Between steps the
    covariance becomes ``P / forget + q I``: a random walk of variance q (Kalman, forget = 1) or RLS with
    forgetting factor ``forget`` (q = 0; RLS with P_0 = I / 0.01 in its own scaling)."""
    steps, streams, dim = x.shape
    rows = len(points) * streams
    stream = torch.arange(rows) % streams
    eye = torch.eye(dim + 1, dtype=DT)
    inflate = (1 / _column(points, "forget", streams)).view(-1, 1, 1)
    walk = _column(points, "q", streams).view(-1, 1, 1) * eye
    cov = eye.repeat(rows, 1, 1)
    w = torch.zeros(rows, dim + 1, dtype=DT)
    cum = torch.zeros(rows, dtype=DT)
    ones = torch.ones(rows, 1, dtype=DT)
    for t in range(steps):
        h = torch.cat([x[t, stream], ones], 1)
        cov = cov * inflate + walk
        ph = torch.bmm(cov, h.unsqueeze(2)).squeeze(2)
        gain = ph / ((h * ph).sum(1, keepdim=True) + NOISE**2)
        err = y[t, stream] - (h * w).sum(1)
        cum += err.square()
        w += gain * err.unsqueeze(1)
        cov = cov - gain.unsqueeze(2) * ph.unsqueeze(1)
        cov = 0.5 * (cov + cov.mT)
    return cum.nan_to_num(nan=math.inf).view(len(points), len(TASKS), -1)


def run_engine(x: Tensor, y: Tensor, points: Sequence[Setting]) -> Tensor:
    """A ``linear`` stream per seed and task through the engine, as a user's spec gets it (the scale-free,
    RLS-preconditioned path: ``{"model": {"family": "linear", "in_dim": 8}}``), plus ``points``' changes."""
    steps, streams, dim = x.shape
    out = []
    for point in points:
        engine = Engine()
        spec = StreamSpec.model_validate(
            {"model": {"family": "linear", "in_dim": dim}, "dtype": "float64", **point}
        )
        ids = [f"s{s}" for s in range(streams)]
        for stream_id in ids:
            engine.add(stream_id, spec)
        cum = torch.zeros(streams, dtype=DT)
        xs, ys = x.numpy(), y.numpy()
        for t in range(steps):
            results = engine.observe(ids, list(xs[t]), list(ys[t].reshape(-1, 1)))
            predicted = torch.tensor(
                [r.prediction[0] if r.prediction else math.nan for r in results], dtype=DT
            )
            cum += (predicted - y[t]).square()
        out.append(cum)
    return torch.stack(out).view(len(points), len(TASKS), -1)
