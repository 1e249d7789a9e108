"""Prequential accuracy benchmark: TrackIn against SGD, Adam, a Kalman filter and RLS on drifting regression.

    .venv/bin/python -m bench.accuracy [--seeds 10] [--steps 5000] [--markdown] [--tune]
    .venv/bin/python -m bench.accuracy --real [--data ../shared/data] [--limit 100000] [--markdown]

``--real`` runs the real-data suite instead (:mod:`bench.realdata`, also ``python -m bench.realdata``):
trackin's defaults, through the service's engine, against last value, constant velocity, a Kalman filter and
RLS on MOT17 boxes, E-mini ticks and GBP/USD minute bars.

Every stream is a linear regression whose weights move: ``x_t ~ N(0, I_8)``, ``y_t = w_t . x_t + 0.1 n_t``.
At each step a method predicts ``y_t``, is scored ``(y_t - yhat_t)^2`` (summed over the run: the cumulative
squared error), then learns from ``(x_t, y_t)``. Three tasks: ``walk+jump`` (random walk, std 0.01 per
coordinate and step, plus an N(0, I) jump at t = 2000), ``velocity`` (constant velocity, std 0.001 per
coordinate and step) and ``oscillation`` (w_0 plus a unit sine of period 1000 steps, random phases).

The gradient methods train the service's ``linear`` family (weight and bias, zero init) on its ``mse`` loss,
so the gradient is ``2 (yhat - y) [x, 1]``. All seeds and grid points of a method run as stacked rows through
the functional core (:mod:`models.functional`), exactly as the engine runs streams. The Kalman filter (weights
on a random walk, known noise variance 0.01, prior N(0, I)) and RLS with forgetting (the same filter with its
covariance inflated by 1/lambda instead of a random walk) are batched the same way. Each method but "TrackIn
defaults" reports its best grid point per task (by mean cumulative error), so the baselines are tuned per task
while TrackIn's defaults are one setting for all tasks; ``--tune`` searches that setting on other seeds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from bench import realdata
from trackin.models import functional as F
from trackin.models.engine import Engine
from trackin.models.specs import TRACKIN_DEFAULTS, StreamSpec

__all__ = ["TASKS", "main", "make_streams"]

DIM = 8
NOISE = 0.1
WALK = 0.01
JUMP_AT = 2000
VELOCITY = 0.001
PERIOD = 1000.0
TASKS = ("walk+jump", "velocity", "oscillation")
TUNE_SEED_OFFSET = 1000
DT = torch.float64

LR_GRID = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1)
ADAM_LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
KALMAN_Q_GRID = tuple(10.0 ** (k / 2) for k in range(-14, -3))  # 1e-7 ... 1e-2, half decades
RLS_FORGET_GRID = (0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
ETA_ON = {"eta": 0.001, "eps_decay": 0.9}
"""The eps setting of the "eta on" rows (the best eta > 0 of ``--tune``)."""

Setting = dict[str, Any]


def _stream(task: str, seed: int, steps: int) -> tuple[Tensor, Tensor]:
    """One stream of ``task``: inputs ``[steps, DIM]`` and targets ``[steps]``."""
    gen = torch.Generator().manual_seed(seed * len(TASKS) + TASKS.index(task))
    w0 = torch.randn(DIM, generator=gen, dtype=DT)
    t = torch.arange(steps, dtype=DT).unsqueeze(1)
    if task == "walk+jump":
        w = w0 + WALK * torch.randn(steps, DIM, generator=gen, dtype=DT).cumsum(0)
        w[JUMP_AT:] += torch.randn(DIM, generator=gen, dtype=DT)
    elif task == "velocity":
        w = w0 + VELOCITY * torch.randn(DIM, generator=gen, dtype=DT) * t
    else:
        phase = 2 * math.pi * torch.rand(DIM, generator=gen, dtype=DT)
        w = w0 + torch.sin(2 * math.pi * t / PERIOD + phase)
    x = torch.randn(steps, DIM, generator=gen, dtype=DT)
    y = (w * x).sum(1) + NOISE * torch.randn(steps, generator=gen, dtype=DT)
    return x, y


def make_streams(seeds: Sequence[int], steps: int) -> tuple[Tensor, Tensor]:
    """All tasks' streams, task-major: inputs ``[steps, streams, DIM]``, targets ``[steps, streams]``."""
    pairs = [_stream(task, seed, steps) for task in TASKS for seed in seeds]
    return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)


# ---------------------------------------------------------------------------------------------------------
# Runners: each returns the cumulative squared error per (grid point, task, seed).
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Methods, their grids, and the table.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[Tensor, Tensor, Sequence[Setting]], Tensor]
    points: tuple[Setting, ...]
    tuned: tuple[str, ...]
    """The keys of the grid, shown as the chosen setting (empty: one fixed setting)."""


def trackin_setting(**changes: Any) -> Setting:
    """TrackIn's defaults with ``changes``."""
    keys = {"lr", "gamma", "beta", "beta_rule", "debias", "eta", "eps_decay"}
    return {**TRACKIN_DEFAULTS.model_dump(include=keys), **changes}


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


def methods() -> list[Method]:
    out = [
        Method("trackin defaults (engine: scale-free, RLS)", run_engine, ({},), ()),
        Method("  the same, forget 0.98", run_engine, ({"optimizer": {"forget": 0.98}},), ()),
        Method("TrackIn defaults (first order)", run_trackin, (trackin_setting(),), ()),
    ]
    for rule, eta_on in itertools.product(("constant", "cos", "norm"), (False, True)):
        eps = ETA_ON if eta_on else {"eta": 0.0}
        points = tuple(trackin_setting(lr=lr, beta_rule=rule, **eps) for lr in LR_GRID)
        out.append(Method(f"TrackIn {rule}, eta {'on' if eta_on else 'off'}", run_trackin, points, ("lr",)))
    sgd = {"momentum": 0.0, "dampening": 0.0, "debias": False}
    out.append(Method("SGD", run_sgd, tuple({**sgd, "lr": lr} for lr in LR_GRID), ("lr",)))
    ewma = {"momentum": 0.9, "dampening": 0.9, "debias": True}
    out.append(
        Method("SGD + momentum 0.9 (EWMA)", run_sgd, tuple({**ewma, "lr": lr} for lr in LR_GRID), ("lr",))
    )
    out.append(Method("Adam", run_adam, tuple({"lr": lr} for lr in ADAM_LR_GRID), ("lr",)))
    kalman = tuple({"q": q, "forget": 1.0} for q in KALMAN_Q_GRID)
    out.append(Method("Kalman filter (random walk)", run_filter, kalman, ("q",)))
    rls = tuple({"q": 0.0, "forget": lam} for lam in RLS_FORGET_GRID)
    out.append(Method("RLS with forgetting", run_filter, rls, ("forget",)))
    return out


def run_methods(x: Tensor, y: Tensor, todo: Sequence[Method]) -> dict[str, Tensor]:
    """Cumulative errors ``[points, tasks, seeds]`` per method; methods sharing a runner run as one batch."""
    results: dict[str, Tensor] = {}
    for run in dict.fromkeys(m.run for m in todo):
        group = [m for m in todo if m.run is run]
        cum = run(x, y, [p for m in group for p in m.points])
        for m, part in zip(group, torch.split(cum, [len(m.points) for m in group]), strict=True):
            results[m.name] = part
    return results


def _best(cum: Tensor) -> Tensor:
    """Index of the grid point with the lowest mean cumulative error, per task: ``[tasks]``."""
    return cum.mean(2).argmin(0)


def _fmt_setting(method: Method, point: Setting) -> str:
    return ", ".join(f"{k}={point[k]:.3g}" for k in method.tuned) or "fixed"


def table_rows(todo: Sequence[Method], results: dict[str, Tensor], reference: str) -> list[list[str]]:
    """Per method and task: cumulative error mean +- standard error, mean of per-seed ratios to the best
    reference (paired by seed) +- standard error, and the chosen setting."""
    ref_cum = results[reference]
    ref = ref_cum[_best(ref_cum), torch.arange(len(TASKS))]  # [tasks, seeds]
    seeds = ref.shape[1]
    rows = []
    for m in todo:
        cum = results[m.name]
        best = cum[_best(cum), torch.arange(len(TASKS))]
        ratio = best / ref
        cells = [m.name]
        for k in range(len(TASKS)):
            se = best[k].std() / math.sqrt(seeds) if seeds > 1 else torch.tensor(0.0)
            rse = ratio[k].std() / math.sqrt(seeds) if seeds > 1 else torch.tensor(0.0)
            cells += [
                f"{best[k].mean():.1f} ± {se:.1f}",
                f"{ratio[k].mean():.3f} ± {rse:.3f}",
                _fmt_setting(m, m.points[int(_best(cum)[k])]),
            ]
        rows.append(cells)
    return rows


def _print(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("method", "setting") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=250).print(table)


# ---------------------------------------------------------------------------------------------------------
# --tune: one setting of TrackIn for all tasks.
# ---------------------------------------------------------------------------------------------------------

TUNE_GRID: dict[str, tuple[Any, ...]] = {
    "lr": (0.015, 0.02, 0.03, 0.04, 0.05),
    "gamma": (0.8, 0.9, 0.95, 0.98),
    "beta": (0.0, 0.5, 1.0, 2.0, 4.0),
    "beta_rule": ("constant", "cos", "norm"),
    "eps": ((0.0, 0.9), (0.001, 0.9), (0.003, 0.9), (0.01, 0.9), (0.001, 0.99), (0.003, 0.99)),
}
"""TrackIn settings searched by ``--tune``; beta = 0 is plain SGD (the rule and gamma then do nothing)."""

_KEYS = ("lr", "gamma", "beta", "beta_rule", "eta", "eps_decay")


def tune(x: Tensor, y: Tensor, markdown: bool, top: int = 20) -> None:
    """Rank TrackIn settings by the geometric mean over tasks of their ratio to the best Kalman filter.

    Also shows the best setting of each variant (rule, eta on or off, and beta = 0) and the current
    defaults, each with its per-seed score relative to the overall best (paired by seed, mean +- s.e.).
    """
    kalman = next(m for m in methods() if m.name.startswith("Kalman"))
    ref = run_filter(x, y, kalman.points).mean(2).min(0).values  # [tasks]
    points = [
        {**dict(zip(_KEYS[:4], combo[:4], strict=True)), "eta": combo[4][0], "eps_decay": combo[4][1]}
        for combo in itertools.product(*TUNE_GRID.values())
    ]
    # with beta = 0 the rule and gamma do nothing: keep one of those duplicates
    first = {"beta_rule": TUNE_GRID["beta_rule"][0], "gamma": TUNE_GRID["gamma"][0]}
    points = [p for p in points if p["beta"] > 0 or all(p[k] == v for k, v in first.items())]
    points = [{**p, "debias": True} for p in points] + [trackin_setting()]
    cum = torch.cat([run_trackin(x, y, chunk) for chunk in _chunks(points, 600)])  # [points, tasks, seeds]
    ratio = cum.mean(2) / ref
    score = ratio.log().mean(1).exp()
    per_seed = (cum / ref.unsqueeze(1)).log().mean(1).exp()  # [points, seeds]
    order = score[:-1].argsort()
    best = int(order[0])

    def cells(i: int) -> list[str]:
        rel = per_seed[i] / per_seed[best]
        se = rel.std() / math.sqrt(rel.numel()) if rel.numel() > 1 else torch.tensor(0.0)
        return [str(points[i][k]) for k in _KEYS] + [
            f"{score[i]:.3f}",
            f"{rel.mean():.3f} ± {se:.3f}",
            *(f"{r:.3f}" for r in ratio[i].tolist()),
        ]

    header = [*_KEYS, "geo-mean × Kalman", "× best (paired)", *TASKS]
    rows = [[str(rank), *cells(i)] for rank, i in enumerate(order[:top].tolist(), start=1)]
    _print(
        "TrackIn settings, best first (ratio to the per-task best Kalman filter)",
        ["rank", *header],
        rows,
        markdown,
    )
    rows = []
    for rule, eta_on in itertools.product(("beta = 0", "constant", "cos", "norm"), (False, True)):
        name = f"{rule}, eta {'on' if eta_on else 'off'}" + (
            " (SGD)" if rule == "beta = 0" and not eta_on else ""
        )
        mask = [
            (p["beta"] == 0 if rule == "beta = 0" else p["beta"] > 0 and p["beta_rule"] == rule)
            and (p["eta"] > 0) == eta_on
            for p in points
        ]
        mask[-1] = False  # the defaults' own row
        rows.append([name, *cells(int(torch.where(torch.tensor(mask), score, math.inf).argmin()))])
    rows.append(["current defaults", *cells(len(points) - 1)])
    _print("Best setting per variant, and the current defaults", ["variant", *header], rows, markdown)


def _chunks(items: Sequence[Setting], size: int) -> list[list[Setting]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (for docs/trackin.md)")
    parser.add_argument("--tune", action="store_true", help="search TrackIn's default setting (other seeds)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: the tensors are small; extra threads "
        "only spin, and on a busy machine they slow every op down many times)",
    )
    parser.add_argument("--real", action="store_true", help="the real-data suite (bench/realdata.py) instead")
    parser.add_argument("--data", type=Path, default=realdata.DEFAULT_DATA, help="--real: the shared data")
    parser.add_argument("--limit", type=int, default=realdata.DEFAULT_LIMIT, help="--real: E-mini ticks")
    args = parser.parse_args(argv)
    if args.real:
        markdown = ["--markdown"] if args.markdown else []
        realdata.main(
            ["--data", str(args.data), "--limit", str(args.limit), "--threads", str(args.threads), *markdown]
        )
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    offset = TUNE_SEED_OFFSET if args.tune else 0
    x, y = make_streams(range(offset, offset + args.seeds), args.steps)
    if args.tune:
        tune(x, y, args.markdown)
    else:
        todo = methods()
        results = run_methods(x, y, todo)
        header = ["method"] + [f"{t} {c}" for t in TASKS for c in ("cum. sq. error", "× Kalman", "setting")]
        title = (
            f"Prequential cumulative squared error, d={DIM}, T={args.steps}, noise {NOISE}, "
            f"{args.seeds} seeds (mean ± s.e.; best grid point per task)"
        )
        _print(title, header, table_rows(todo, results, "Kalman filter (random walk)"), args.markdown)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
