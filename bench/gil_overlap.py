"""Does the engine thread overlap a busy event loop? The engine on a thread beside Python work, per GIL switch
interval.

The server's engine thread runs the fused kernel without the GIL, but takes it for a moment before and after
each call; the event loop holds it while it runs Python (decoding and checking requests). This runs the
same two jobs in one process: ``Engine.observe_arrays`` on batches of ``--batch`` (1,000 ``linear 16``
streams past the scales' warm-up) on a thread, and a pure-Python loop on the main thread, first each alone,
then together, at each GIL switch interval (``sys.setswitchinterval``). With perfect overlap the pair takes
as long as the longer job; with none, as long as both. Rounds alternate the intervals.

    .venv/bin/python -m bench.gil_overlap [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec

__all__ = ["main"]

STREAMS, IN_DIM, OBSERVATIONS = 1000, 16, 100_000
INTERVALS_MS = (5.0, 1.0, 0.5, 0.2, 0.1)


def _engine_job(batch: int) -> Callable[[], None]:
    """Steps of ``OBSERVATIONS`` random-stream observations in batches of ``batch`` (warmed once)."""
    rng = np.random.default_rng(0)
    engine = Engine("cpu")
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": IN_DIM}})
    names = [f"s{i}" for i in range(STREAMS)]
    for name in names:
        engine.add(name, spec)
    ids = [names[i] for i in rng.integers(0, STREAMS, OBSERVATIONS).tolist()]
    x = rng.normal(size=(OBSERVATIONS, IN_DIM))
    y = x.sum(axis=1, keepdims=True)

    def run() -> None:
        for k in range(0, OBSERVATIONS, batch):
            engine.observe_arrays(ids[k : k + batch], x[k : k + batch], y[k : k + batch])

    run()  # compiled, and the streams past their scales' warm-up
    return run


def _python_job() -> None:
    total = 0
    for i in range(4_000_000):
        total += i


def _timed(job: Callable[[], None]) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def _together(engine_job: Callable[[], None]) -> float:
    started = time.perf_counter()
    thread = threading.Thread(target=engine_job)
    thread.start()
    _python_job()
    thread.join()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    engine_job = _engine_job(args.batch)
    before = sys.getswitchinterval()
    cells: dict[float, list[tuple[float, float, float]]] = {ms: [] for ms in INTERVALS_MS}
    try:
        for _ in range(args.rounds):
            for ms in INTERVALS_MS:
                sys.setswitchinterval(ms / 1000)
                cells[ms].append((_timed(engine_job), _timed(_python_job), _together(engine_job)))
    finally:
        sys.setswitchinterval(before)
    title = f"engine thread (batches of {args.batch:,}) beside a Python loop, median of {args.rounds}"
    table = Table(title=title)
    for column in ("switch interval", "engine alone s", "python alone s", "together s", "overlap"):
        table.add_column(column, justify="right")
    for ms, runs in cells.items():
        engine, python, both = (statistics.median(r[i] for r in runs) for i in range(3))
        # 0: the pair took as long as both jobs one after the other; 1: as long as the longer one
        overlap = (engine + python - both) / min(engine, python)
        table.add_row(f"{ms:g} ms", f"{engine:.3f}", f"{python:.3f}", f"{both:.3f}", f"{overlap:.0%}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
