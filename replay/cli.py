"""``trackin replay FILE``: stream a file through trackin, score its forecasts against the strongest trivial
baseline on a fixed set of arrivals.

Prices (ticks, bars or bid/ask quotes CSV) become one stream per instrument; MOTChallenge ``gt.txt`` boxes
one stream per object, created on the fly from a template (``<sequence>:<id>``), all objects of a frame in
one message. Every answer carries the prediction made before learning from that observation.

The stream spec is the one a user gets by default, validated with ``StreamSpec`` before anything is sent
(an invalid spec stops the replay before it starts):

- prices: ``{"model": {"family": "ar", "dim": 1}}``, every other field at its default, prices as they are
  in the file (``--unit U`` divides them by U first; the default 1 changes nothing).
- boxes: ``{"model": {"family": "track", "dim": 4}}`` (constant velocity from a track's second box, with a
  learned residual) when the engine has the ``track`` family; with an engine that has not, the ``ar`` spec
  ``{"family": "ar", "dim": 4, "lags": 8, "target": "delta"}`` with ``huber`` loss (delta 1 px) and lr 0.003,
  as before (the MSE diverged on MOT17-02 at every learning rate tried).
- ``--spec`` replaces the default; ``--lags``, ``--lr`` and ``--loss`` then set those fields of either.

Scoring (:mod:`trackin.replay.scoring`): from every stream's third observation on, whatever ``lags``, minus
the first change across a session gap of a price file; trackin's warming answers (no forecast yet) count as
the last value; the baseline is constant velocity on the frame numbers for boxes, no change for prices. The
summary gives the ratio of the two mean squared errors: below 1, trackin beats the baseline.

Exit status (:mod:`trackin.replay.errors`): 0; 2 when the file or the spec cannot be replayed; 1 when
trackin diverged (a non-finite mean loss or forecast), after printing the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trackin.replay.errors import InputError, ReplayError
from trackin.replay.scoring import GAP_FACTOR, previous_index
from trackin.replay.sinks import InProcessSink, Observation, Sink, StreamPlan
from trackin.replay.sources import FORMATS, Format, Steps, detect_format, read_steps
from trackin.replay.summary import Answers, Summary, summarise

DEFAULT_URL = "http://127.0.0.1:8000"
PRICE_SPEC: dict[str, Any] = {"model": {"family": "ar", "dim": 1}}
TRACK_SPEC: dict[str, Any] = {"model": {"family": "track", "dim": 4}}
AR_BOX_SPEC: dict[str, Any] = {
    "model": {"family": "ar", "dim": 4, "lags": 8, "target": "delta"},
    "loss": "huber",
    "huber_delta": 1.0,
    "optimizer": {"name": "trackin", "lr": 0.003},
}
"""The box spec for an engine without the ``track`` family."""

__all__ = ["ReplayOptions", "Summary", "add_parser", "box_spec", "replay", "stream_spec"]


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
    loss: Literal["mse", "huber"] | None = None
    unit: float = 1.0  # values are sent divided by it
    spec: dict[str, Any] | None = None  # a whole stream spec, instead of the default
    gap_factor: float = GAP_FACTOR
    plot: Path | None = None
    progress: bool = True


def _validated(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every default filled in; :class:`InputError` if ``StreamSpec`` refuses it."""
    from pydantic import ValidationError

    from trackin.models.specs import StreamSpec

    try:
        return StreamSpec.model_validate(spec).model_dump(mode="json")
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(f"invalid stream spec {json.dumps(spec)}: {problems}") from None


def box_spec() -> dict[str, Any]:
    """The ``track`` spec if this engine accepts it, else the ``ar`` one."""
    try:
        _validated(TRACK_SPEC)
    except InputError:
        return copy.deepcopy(AR_BOX_SPEC)
    return copy.deepcopy(TRACK_SPEC)


def stream_spec(fmt: Format, options: ReplayOptions) -> dict[str, Any]:
    """The spec a replay sends (see the module docstring), not yet validated."""
    base = options.spec if options.spec is not None else box_spec() if fmt == "mot" else PRICE_SPEC
    spec = copy.deepcopy(base)
    if options.lags is not None:
        spec.setdefault("model", {})["lags"] = options.lags
    if options.lr is not None:
        optimizer = spec.setdefault("optimizer", {})
        if isinstance(optimizer, dict):
            optimizer["lr"] = options.lr
    if options.loss is not None:
        spec["loss"] = options.loss
    return spec


def _messages(
    steps: Steps, streams: list[str], sent: np.ndarray, per_message: int
) -> Iterator[list[Observation]]:
    starts = steps.starts
    # Boxes carry their frame number, so a track's constant velocity bridges frames it was missing from;
    # prices go one step per tick (a change does not grow with the time between ticks).
    frames = np.repeat(steps.labels, np.diff(starts)).tolist() if steps.format == "mot" else None
    for k in range(0, len(starts) - 1, per_message):
        a, b = int(starts[k]), int(starts[min(k + per_message, len(starts) - 1)])
        rows = sent[a:b].tolist()
        message: list[Observation] = [
            {"stream": streams[i], "value": row} for i, row in zip(range(a, b), rows, strict=True)
        ]
        if frames is not None:
            for i, item in zip(range(a, b), message, strict=True):
                item["ts"] = frames[i]  # type: ignore[index]
        yield message


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
    """Validate, read, send, score; with ``options.plot``, also write the PNG.

    Raises :class:`InputError` before sending anything when the file or the spec cannot be replayed. A
    diverged run returns its summary, whose :meth:`Summary.check` raises.
    """
    if not (np.isfinite(options.unit) and options.unit > 0):
        raise InputError(f"--unit must be a positive number, not {options.unit}")
    fmt = detect_format(options.path) if options.format == "auto" else options.format
    sent_spec = stream_spec(fmt, options)
    spec = _validated(sent_spec)
    steps = read_steps(options.path, fmt, limit=options.limit, name=options.stream)
    boxes = steps.format == "mot"
    keys, codes = np.unique(np.asarray(steps.keys, dtype=object), return_inverse=True)
    codes = codes.astype(np.int64)
    streams_of_keys = [f"{steps.name}:{k}" if boxes else str(k) for k in keys.tolist()]
    streams = [streams_of_keys[c] for c in codes.tolist()]
    plan = (
        StreamPlan(sent_spec, template=steps.name, prefix=f"{steps.name}:")
        if boxes
        else StreamPlan(sent_spec, streams=tuple(streams_of_keys))
    )
    per_message = options.batch or (1 if boxes else 1000)
    n = len(steps)
    answers = Answers.empty(n, steps.dim)
    sink = _make_sink(options)
    try:
        sink.prepare(plan)
        started = time.perf_counter()
        position = 0
        with _progress(n, options.progress, steps.name) as advance:
            for results in sink.run(_messages(steps, streams, steps.values / options.unit, per_message)):
                for j, result in enumerate(results, start=position):
                    answers.record(j, result)
                position += len(results)
                advance(len(results))
        seconds = time.perf_counter() - started
    finally:
        sink.close()
    answers.predictions *= options.unit
    summary = summarise(
        steps,
        codes,
        previous_index(codes),
        answers,
        seconds,
        sink.label,
        spec,
        sent_spec,
        options.unit,
        options.gap_factor,
    )
    summary.stream_names = streams_of_keys
    if options.plot is not None:
        from trackin.replay.plot import plot_summary

        plot_summary(summary, options.plot)
    return summary


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


def _spec_argument(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError("a stream spec is a JSON object")
    return spec


def add_parser(commands: Any) -> None:
    """Register ``replay`` on the ``trackin`` command's subparsers."""
    p = commands.add_parser(
        "replay", help="stream a ticks/bars/quotes CSV or MOTChallenge gt.txt through trackin"
    )
    p.add_argument("file", type=Path)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=os.environ.get("TRACKIN_URL", DEFAULT_URL),
        help="running service (its API key from TRACKIN_API_KEY)",
    )
    where.add_argument("--in-process", action="store_true", help="step an engine here, no server")
    p.add_argument("--format", choices=["auto", *FORMATS], default="auto")
    p.add_argument("--limit", type=int, help="at most N observations (whole frames for mot)")
    p.add_argument("--batch", type=int, help="rows (prices, default 1000) or frames (mot, 1) per message")
    p.add_argument("--transport", choices=["rest", "ws"], default="rest")
    p.add_argument("--stream", help="stream name (prices) or template/prefix name (mot)")
    p.add_argument("--lags", type=int, help="set the spec's model.lags")
    p.add_argument("--lr", type=float, help="set the spec's optimizer.lr")
    p.add_argument("--loss", choices=["mse", "huber"], help="set the spec's loss")
    p.add_argument(
        "--unit", type=float, default=1.0, help="send values divided by this (default 1: as they are)"
    )
    p.add_argument("--spec", type=_spec_argument, help="a whole stream spec (JSON) instead of the default")
    p.add_argument(
        "--gap-factor",
        type=float,
        default=GAP_FACTOR,
        help="prices: a spacing over this many median spacings is a session gap (default %(default)g)",
    )
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
        gap_factor=args.gap_factor,
        plot=args.plot,
        progress=not args.no_progress,
    )
    try:
        summary = replay(options)
        print("\n".join(summary.lines()))
        if options.plot is not None:
            print(f"  plot           {options.plot}")
        summary.check()
    except ReplayError as error:
        print(f"trackin replay: error: {error}", file=sys.stderr)
        return error.exit_status
    return 0
