"""``trackin replay FILE``: stream a file through trackin, score its forecasts against the obvious baseline.

Prices (ticks or bars CSV) become one ``ar`` stream per instrument; MOTChallenge ``gt.txt`` boxes become
one ``ar`` stream per object, created on the fly from a template (``<sequence>:<id>``), all objects of a
frame in one message. Every answer carries the prediction made before learning from that observation; the
baseline predicts no change (the last price, the last box). The summary gives the ratio of the two mean
squared errors over the observations both scored: below 1, trackin beats the baseline.

Model settings (flags override them; ``--spec`` replaces them):

- Values are sent in units of the file's typical change (``--unit auto``: the median non-zero absolute
  change between consecutive observations of a stream; 0.25 for E-mini ticks, 1e-4 for GBP/USD minute
  bars, 1 to 2 px for MOT17 boxes), prices also relative to the first price. A gradient step's size
  depends on the scale of the inputs, and FX quotes move by 1e-5 where boxes move by pixels: in these
  units one set of hyperparameters fits every file, and float32 keeps full precision.
- ``target: delta``: the model forecasts the next change from the last ``lags`` changes. Zero weights (the
  initial state) forecast no change, which is the baseline itself, so learning starts from it.
- ``huber`` loss (delta 1 unit): on MOT17-02 the MSE diverged at every learning rate tried (a box moving
  30 px a frame gives gradients 30 times those of a still one); Huber bounds each step's error term and
  equals the MSE (up to 1/2) within one unit.
- ``lr 0.003`` (TrackIn's other settings at their defaults); ``lags 16`` for prices, ``lags 8`` for boxes
  (tracks are short and each object waits for its lag window). Chosen on the first 20,000 E-mini ticks
  (lr 0.003: ratio 0.925; 0.01: 0.944; 0.03: 1.083) and on MOT17-02 (lags 8, lr 0.003: 0.38).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trackin.replay.sinks import InProcessSink, Observation, Sink, StreamPlan
from trackin.replay.sources import FORMATS, Format, Steps, read_steps
from trackin.replay.summary import Summary

DEFAULT_URL = "http://127.0.0.1:8000"

__all__ = ["ReplayOptions", "Summary", "add_parser", "replay", "stream_spec"]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    path: Path
    url: str | None = DEFAULT_URL  # None: in-process
    format: Format | Literal["auto"] = "auto"
    limit: int | None = None
    batch: int | None = None  # steps per message: rows of prices (default 1000) or frames (default 1)
    transport: Literal["rest", "ws"] = "rest"
    stream: str | None = None
    lags: int | None = None
    lr: float | None = None
    loss: Literal["mse", "huber"] = "huber"
    unit: float | None = None  # None: auto
    spec: dict[str, Any] | None = None  # a whole stream spec, instead of the one built from the above
    plot: Path | None = None
    progress: bool = True


def stream_spec(fmt: Format, options: ReplayOptions) -> dict[str, Any]:
    """The stream spec a replay uses (see the module docstring for why)."""
    if options.spec is not None:
        return options.spec
    boxes = fmt == "mot"
    return {
        "model": {
            "family": "ar",
            "dim": 4 if boxes else 1,
            "lags": options.lags or (8 if boxes else 16),
            "target": "delta",
        },
        "loss": options.loss,
        "huber_delta": 1.0,
        "optimizer": {"name": "trackin", "lr": options.lr or 0.003},
    }


def _previous(codes: np.ndarray) -> np.ndarray:
    """For each observation, the index of the same stream's previous observation (-1 for the first)."""
    order = np.argsort(codes, kind="stable")
    previous = np.full(codes.size, -1, dtype=np.int64)
    same = codes[order[1:]] == codes[order[:-1]]
    previous[order[1:][same]] = order[:-1][same]
    return previous


def typical_change(values: np.ndarray, previous: np.ndarray, sample: int = 10_000) -> float:
    """Median non-zero absolute change between consecutive observations of a stream (first ``sample``)."""
    has = np.flatnonzero(previous >= 0)[:sample]
    changes = np.abs(values[has] - values[previous[has]]).ravel()
    changes = changes[changes > 0]
    return float(np.median(changes)) if changes.size else 1.0


def _messages(
    steps: Steps, streams: list[str], scaled: np.ndarray, per_message: int
) -> Iterator[list[Observation]]:
    starts = steps.starts
    for k in range(0, len(starts) - 1, per_message):
        a, b = int(starts[k]), int(starts[min(k + per_message, len(starts) - 1)])
        rows = scaled[a:b].tolist()
        yield [{"stream": streams[i], "value": row} for i, row in zip(range(a, b), rows, strict=True)]


def _make_sink(options: ReplayOptions) -> Sink:
    if options.url is None:
        return InProcessSink()
    try:
        from trackin.replay.remote import RestSink, WsSink
    except ImportError as error:  # the replay extra is not installed
        raise SystemExit(
            f"trackin replay --url needs trackin-client ({error}): pip install ./client 'trackin[replay]', "
            "or replay without a server: --in-process"
        ) from None
    return WsSink(options.url) if options.transport == "ws" else RestSink(options.url)


def replay(options: ReplayOptions) -> Summary:
    """Read, send, score; with ``options.plot``, also write the PNG."""
    steps = read_steps(options.path, options.format, limit=options.limit, name=options.stream)
    boxes = steps.format == "mot"
    keys, codes = np.unique(np.asarray(steps.keys, dtype=object), return_inverse=True)
    codes = codes.astype(np.int64)
    streams_of_keys = [f"{steps.name}:{k}" if boxes else str(k) for k in keys.tolist()]
    streams = [streams_of_keys[c] for c in codes.tolist()]
    previous = _previous(codes)
    unit = options.unit or typical_change(steps.values, previous)
    origin = 0.0 if boxes or not len(steps) else float(steps.values[0, 0])
    scaled = (steps.values - origin) / unit
    spec = stream_spec(steps.format, options)
    plan = (
        StreamPlan(spec, template=steps.name, prefix=f"{steps.name}:")
        if boxes
        else StreamPlan(spec, streams=tuple(streams_of_keys))
    )
    per_message = options.batch or (1 if boxes else 1000)
    n = len(steps)
    predictions = np.full((n, steps.dim), np.nan)
    losses = np.full(n, np.nan)
    applied = 0
    sink = _make_sink(options)
    try:
        sink.prepare(plan)
        started = time.perf_counter()
        position = 0
        with _progress(n, options.progress, steps.name) as advance:
            for results in sink.run(_messages(steps, streams, scaled, per_message)):
                for j, result in enumerate(results, start=position):
                    prediction = result.get("prediction")
                    if prediction is not None:
                        predictions[j] = prediction
                    if result.get("loss") is not None:
                        losses[j] = result["loss"]
                    applied += bool(result.get("applied"))
                position += len(results)
                advance(len(results))
        seconds = time.perf_counter() - started
    finally:
        sink.close()
    summary = _summarise(
        steps, codes, previous, predictions * unit + origin, losses, applied, seconds, sink.label, spec, unit
    )
    summary.stream_names = streams_of_keys
    if options.plot is not None:
        from trackin.replay.plot import plot_summary

        plot_summary(summary, options.plot)
    return summary


def _summarise(
    steps: Steps,
    codes: np.ndarray,
    previous: np.ndarray,
    predictions: np.ndarray,
    losses: np.ndarray,
    applied: int,
    seconds: float,
    transport: str,
    spec: dict[str, Any],
    unit: float,
) -> Summary:
    values = steps.values
    scored = ~np.isnan(predictions).any(axis=1) & (previous >= 0)
    model_se = ((predictions - values) ** 2).sum(axis=1)[scored]
    base_se = ((values[previous] - values) ** 2).sum(axis=1)[scored]
    return Summary(
        name=steps.name,
        format=steps.format,
        transport=transport,
        observations=len(steps),
        streams=int(codes.max()) + 1 if codes.size else 0,
        scored=int(scored.sum()),
        applied=applied,
        seconds=seconds,
        mean_loss=float(np.nanmean(losses)) if np.isfinite(losses).any() else float("nan"),
        mse=float(model_se.mean()) if model_se.size else float("nan"),
        baseline_mse=float(base_se.mean()) if base_se.size else float("nan"),
        unit=unit,
        spec=spec,
        values=values,
        predictions=predictions,
        previous=previous,
        losses=losses,
        codes=codes,
        step_of=np.repeat(steps.labels, np.diff(steps.starts)),
    )


@contextlib.contextmanager
def _progress(total: int, enabled: bool, name: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over observations; yields ``advance(k)`` (a no-op when disabled)."""
    if not enabled:
        yield lambda k: None
        return
    from rich.progress import Progress

    with Progress(*Progress.get_default_columns(), "{task.completed:,} obs") as bar:
        task = bar.add_task(f"replay {name}", total=total)
        yield lambda k: bar.advance(task, k)


def add_parser(commands: Any) -> None:
    """Register ``replay`` on the ``trackin`` command's subparsers."""
    p = commands.add_parser("replay", help="stream a ticks/bars CSV or MOTChallenge gt.txt through trackin")
    p.add_argument("file", type=Path)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=os.environ.get("TRACKIN_URL", DEFAULT_URL), help="running service")
    where.add_argument("--in-process", action="store_true", help="step an engine here, no server")
    p.add_argument("--format", choices=["auto", *FORMATS], default="auto")
    p.add_argument("--limit", type=int, help="at most N observations (whole frames for mot)")
    p.add_argument("--batch", type=int, help="rows (prices, default 1000) or frames (mot, 1) per message")
    p.add_argument("--transport", choices=["rest", "ws"], default="rest")
    p.add_argument("--stream", help="stream name (prices) or template/prefix name (mot)")
    p.add_argument("--lags", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--loss", choices=["mse", "huber"], default="huber")
    p.add_argument("--unit", type=float, help="value unit (default: the typical change)")
    p.add_argument("--spec", type=json.loads, help="a whole stream spec (JSON) instead of the defaults")
    p.add_argument("--plot", type=Path, help="write a PNG of forecasts and rolling loss")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    options = ReplayOptions(
        path=args.file,
        url=None if args.in_process else args.url,
        format=args.format,
        limit=args.limit,
        batch=args.batch,
        transport=args.transport,
        stream=args.stream,
        lags=args.lags,
        lr=args.lr,
        loss=args.loss,
        unit=args.unit,
        spec=args.spec,
        plot=args.plot,
        progress=not args.no_progress,
    )
    summary = replay(options)
    print("\n".join(summary.lines()))
    if options.plot is not None:
        print(f"  plot           {options.plot}")
    return 0
