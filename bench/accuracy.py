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
covariance inflated by 1/lambda instead of a random walk) are batched the same way. The first rows are the
engine with a user's default spec (the scale-free, RLS-preconditioned path, ``models/tracking.py``), then the
first-order TrackIn defaults. Each method with a grid reports its best point per task (by mean cumulative
error), so the baselines are tuned per task while the defaults are one setting for all tasks; ``--tune``
searches the first-order setting on other seeds. Tasks: ``bench/drift_tasks.py``; runners:
``bench/accuracy_runners.py``.
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
from trackin.models.specs import TRACKIN_DEFAULTS

__all__ = ["TASKS", "main", "make_streams"]

from bench.accuracy_runners import run_adam, run_engine, run_filter, run_sgd, run_trackin
from bench.drift_tasks import (
    ADAM_LR_GRID,
    DIM,
    ETA_ON,
    KALMAN_Q_GRID,
    LR_GRID,
    NOISE,
    RLS_FORGET_GRID,
    TASKS,
    TUNE_SEED_OFFSET,
    Setting,
    make_streams,
)

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
