"""Real-data accuracy: trackin's defaults against classical forecasters on MOT17 boxes, E-mini and GBP/USD.

    .venv/bin/python -m bench.realdata [--data ../shared/data] [--limit 100000] [--markdown]
    .venv/bin/python -m bench.accuracy --real [--data ...] [--limit ...] [--markdown]   # the same

The data sets (:mod:`bench.datasets`): every MOTChallenge sequence under ``DATA/tracking`` (pedestrian boxes
``[cx, cy, w, h]``, one stream per track), E-mini trade ticks (the series of distinct prices: a tick whose
price equals the previous tick's is dropped; the first ``--limit`` of them) and GBP/USD one-minute bars (the
close). ``DATA`` defaults to ``../shared/data`` beside the repository.

**trackin** runs through :class:`trackin.models.engine.Engine`, the service's engine, with the spec a user
gets by default: prices ``{"model": {"family": "ar", "dim": 1}}``; boxes ``{"model": {"family": "track",
"dim": 4}}`` if ``StreamSpec`` accepts it, else ``{"model": {"family": "ar", "dim": 4}}`` (the output says
which). Prequential: each observation is answered with the prediction made before learning from it. All
data sets run as streams of one engine in one pass: call ``k`` carries step ``k`` of every data set (all
boxes of frame ``k`` of each sequence, the ``k``-th price of each series), so a price series still gets one
call per observation, but the series share their calls, as a service's instruments do. Streams are
independent, so this is the same as one run per data set. Times are passed on when ``Engine.observe`` takes
``ts``. A warming answer (no forecast yet) is scored as the last value, which is what a user gets; the table
notes say how many scored arrivals that was.

**Baselines**, on the same arrivals, float64 (:mod:`bench.baselines`, :mod:`trackin.replay.scoring`): last
value (no change), constant velocity (boxes: on the frame numbers, so frame gaps are extrapolated over;
prices: per observation), a Kalman filter whose AR coefficients on the last 8 velocities follow a random
walk, and RLS with forgetting on the same regression. The two filters report the best point of a small grid
per data set: they are **tuned** on the data they are scored on; trackin is not.

**Metrics**, on a fixed scored set, the same for every method: each stream's arrivals from its third on (for
prices, minus the first change after a session gap: :mod:`trackin.replay.scoring`). Boxes: mean IoU of the
forecast box with the true one, and mean distance of the centres divided by the true box height. Prices: MSE
of the forecast (of the next change, equivalently of the next price) divided by the no-change forecast's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.baselines import FILTER_LAGS, filter_forecasts, kalman_grid, rls_grid
from bench.datasets import DataSet, load_all
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.replay.scoring import constant_velocity, last_value

__all__ = ["DEFAULT_DATA", "main", "user_spec"]

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULT_LIMIT = 100_000
PRICE_SPEC: dict[str, Any] = {"model": {"family": "ar", "dim": 1}}
TRACK_SPEC: dict[str, Any] = {"model": {"family": "track", "dim": 4}}
AR_BOX_SPEC: dict[str, Any] = {"model": {"family": "ar", "dim": 4}}
COLUMNS = ("trackin defaults", "last value", "constant velocity", "Kalman RW-AR (tuned)", "RLS (tuned)")


def user_spec(kind: str) -> tuple[dict[str, Any], str]:
    """The spec a user gets by default for ``kind``, and a note when it is a fallback."""
    if kind == "prices":
        return PRICE_SPEC, ""
    try:
        StreamSpec.model_validate(TRACK_SPEC)
    except ValueError:
        return AR_BOX_SPEC, "the engine has no `track` family: boxes fall back to `ar`"
    return TRACK_SPEC, ""


@dataclass
class Answers:
    """trackin's answers for one data set, per observation."""

    predictions: np.ndarray  # [n, dim], NaN where none
    warming: np.ndarray  # [n] bool
    skipped: np.ndarray  # [n] bool: the engine found the loss or gradient not finite and took no step


def run_trackin(datasets: Sequence[DataSet]) -> tuple[list[Answers], bool]:
    """All data sets through one engine, step ``k`` of each in call ``k``; and whether times were passed."""
    engine = Engine("cpu")
    timed = True  # every series' observation goes with its time (frame numbers for boxes)
    ids, rows, times = [], [], []
    for d, ds in enumerate(datasets):
        spec = StreamSpec.model_validate(user_spec(ds.kind)[0])
        names = [f"{d}:{ds.name}:{c}" for c in range(ds.streams)]
        for name in names:
            engine.add(name, spec)
        ids.append([names[c] for c in ds.codes.tolist()])
        rows.append(list(ds.values))
        # boxes with their frame numbers; prices one step per tick (a change does not grow with the time)
        times.append(ds.clock.tolist() if ds.kind == "boxes" else [None] * len(ds.values))
    answers: list[list[Any]] = [[None] * len(ds.values) for ds in datasets]
    starts = [ds.starts.tolist() for ds in datasets]
    for k in range(max(len(s) - 1 for s in starts)):
        call: list[str] = []
        inputs: list[np.ndarray] = []
        stamps: list[float | None] = []
        spans = []
        for d, s in enumerate(starts):
            if k < len(s) - 1:
                a, b = s[k], s[k + 1]
                call += ids[d][a:b]
                inputs += rows[d][a:b]
                stamps += times[d][a:b]
                spans.append((d, a, b))
        results = engine.observe(call, inputs, [None] * len(call), stamps)
        o = 0
        for d, a, b in spans:
            answers[d][a:b] = results[o : o + b - a]
            o += b - a
    out = []
    for ds, items in zip(datasets, answers, strict=True):
        nan = [np.nan] * ds.dim
        predictions = np.array(
            [nan if r.prediction is None else r.prediction for r in items], dtype=np.float64
        )
        warming = np.array([bool(r.warming) for r in items])
        skipped = np.array([bool(getattr(r, "nonfinite", False)) for r in items])
        out.append(Answers(predictions.reshape(len(items), ds.dim), warming, skipped))
    return out, timed


def box_scores(forecasts: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of ``[cx, cy, w, h]`` boxes, and the centre distance over the true height, per row."""
    half_f, half_t = np.clip(forecasts[:, 2:], 0, None) / 2, truth[:, 2:] / 2
    low = np.maximum(forecasts[:, :2] - half_f, truth[:, :2] - half_t)
    high = np.minimum(forecasts[:, :2] + half_f, truth[:, :2] + half_t)
    inter = np.clip(high - low, 0, None).prod(1)
    union = (2 * half_f).prod(1) + (2 * half_t).prod(1) - inter
    iou = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)
    centre = np.linalg.norm(forecasts[:, :2] - truth[:, :2], axis=1) / truth[:, 3]
    return np.nan_to_num(iou, nan=0.0), centre


@dataclass
class Result:
    """One data set's scores: per method, per metric (higher first for IoU)."""

    metrics: tuple[str, ...]
    scores: dict[str, tuple[float, ...]]
    settings: dict[str, str]
    scored: int
    warming: int
    nonfinite: int
    skipped: int
    gaps: int
    lost: int  # boxes: tracks on which a trackin forecast's centre was off by more than the box height


def evaluate(ds: DataSet, answers: Answers) -> Result:
    """Every method's forecasts of ``ds``'s scored arrivals, scored."""
    values, previous, scored = ds.values, ds.previous, ds.scored
    last = last_value(values, previous)
    warming = answers.warming | np.isnan(answers.predictions).any(1)
    bad = ~warming & ~np.isfinite(answers.predictions).all(1)
    trackin = np.where((warming | bad)[:, None], last, answers.predictions)
    kalman, rls = kalman_grid(), rls_grid()
    filtered = filter_forecasts(values, ds.codes, ds.clock, kalman + rls)
    fixed = {
        "trackin defaults": trackin,
        "last value": last,
        "constant velocity": constant_velocity(values, previous, ds.clock),
    }
    truth = values[scored]

    def score(forecasts: np.ndarray) -> tuple[float, ...]:
        if ds.kind == "boxes":
            iou, centre = box_scores(forecasts[scored], truth)
            return float(iou.mean()), float(centre.mean())
        base = ((last[scored] - truth) ** 2).mean()
        return (float(((forecasts[scored] - truth) ** 2).mean() / base),)

    scores = {name: score(f) for name, f in fixed.items()}
    lost = 0
    if ds.kind == "boxes":
        _, centre = box_scores(trackin, values)
        lost = int(np.unique(ds.codes[scored & ~(centre <= 1)]).size)
    settings: dict[str, str] = {}
    for name, grid, offset in (("Kalman RW-AR (tuned)", kalman, 0), ("RLS (tuned)", rls, len(kalman))):
        per_point = [score(filtered[offset + i]) for i in range(len(grid))]
        key = [-s[0] if ds.kind == "boxes" else s[0] for s in per_point]
        best = int(np.nanargmin(key))
        scores[name], settings[name] = per_point[best], grid[best].label
    metrics = ("mean IoU ↑", "centre error / height ↓") if ds.kind == "boxes" else ("MSE ÷ no change ↓",)
    return Result(
        metrics,
        scores,
        settings,
        scored=int(scored.sum()),
        warming=int((warming & scored).sum()),
        nonfinite=int((bad & scored).sum()),
        skipped=int(answers.skipped.sum()),
        gaps=int(ds.gaps.sum()),
        lost=lost,
    )


def table_rows(datasets: Sequence[DataSet], results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for ds, r in zip(datasets, results, strict=True):
        for m, metric in enumerate(r.metrics):
            cells = [ds.name, metric, f"{r.scored:,}"]
            for column in COLUMNS:
                score = r.scores[column][m]
                # four significant digits: the defaults and constant velocity differ in the fourth
                value = f"{score:.4g}" if abs(score) < 1000 else f"{score:.2g}"
                if column in r.settings:
                    value += f" ({r.settings[column]})"
                if column == "trackin defaults" and r.nonfinite:
                    value += f" ({r.nonfinite:,} non-finite)"
                cells.append(value)
            rows.append(cells)
    return rows


def notes(datasets: Sequence[DataSet], results: Sequence[Result], timed: bool) -> list[str]:
    fallback = user_spec("boxes")[1]
    lines = [
        f"trackin defaults: prices {json.dumps(PRICE_SPEC)}, boxes {json.dumps(user_spec('boxes')[0])}"
        + (f" ({fallback})" if fallback else "")
        + ("; boxes carry their frame numbers as ts" if timed else ""),
        f"Kalman RW-AR and RLS: AR({FILTER_LAGS}) on velocities per stream and coordinate, best grid point "
        "per data set (tuned on the scored data; boxes by IoU)",
    ]
    for ds, r in zip(datasets, results, strict=True):
        if ds.kind == "prices":
            extra = f"; {r.gaps:,} change(s) after a session gap not scored"
        else:
            extra = f"; on {r.lost} of {ds.streams} tracks a trackin forecast was off by over a box height"
        lines.append(
            f"{ds.name}: {ds.note}; {r.scored:,} scored, of which {r.warming:,} trackin warming answers "
            f"scored as the last value{extra}"
            + (f"; {r.nonfinite:,} non-finite forecasts scored as the last value" if r.nonfinite else "")
            + (f"; the engine skipped {r.skipped:,} steps as non-finite (diverged)" if r.skipped else "")
        )
    return lines


def _print(title: str, header: Sequence[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("data set", "metric") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=250).print(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realdata", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data directory")
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="E-mini: at most N distinct-price ticks"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print a markdown table (for docs/trackin.md)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    datasets, missing = load_all(args.data.resolve(), args.limit)
    for line in missing:
        print(f"skipped: {line}")
    if not datasets:
        raise SystemExit(f"no data sets under {args.data}")
    answers, timed = run_trackin(datasets)
    results = [evaluate(ds, a) for ds, a in zip(datasets, answers, strict=True)]
    title = "Real data: one-step forecasts, prequential, on each stream's arrivals from its third on"
    _print(title, ["data set", "metric", "scored", *COLUMNS], table_rows(datasets, results), args.markdown)
    print()
    for line in notes(datasets, results, timed):
        print(f"- {line}" if args.markdown else line)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
