"""What a stream read costs in the engine, on the fused path and on the torch path, side by side in one run.

``GET /v1/streams/{id}`` calls ``Engine.figures`` and ``POST /v1/streams/{id}/predict`` calls
``Engine.predict``, one stream per request. Both engines hold the same streams (``linear`` with the default
spec), stepped past the scales' warm-up with the same data; one was built with ``kernels="auto"`` (the fused
tracking kernel on the CPU), the other with ``kernels="torch"``. Each cell is the best of ``--repeat``
timings of ``--calls`` calls, alternated between the engines, in microseconds per call.

    .venv/bin/python -m bench.reads [--streams 1000] [--calls 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import timeit
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.models.tracking import SCALE_WARMUP

__all__ = ["main"]

IN_DIM = 16


def build(kernels: str, streams: int, seed: int) -> Engine:
    """An engine of ``streams`` linear streams, each stepped ``SCALE_WARMUP + 8`` times."""
    engine = Engine(kernels=kernels)  # type: ignore[arg-type]
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": IN_DIM}})
    ids = [f"s{i}" for i in range(streams)]
    for stream in ids:
        engine.add(stream, spec)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(streams, IN_DIM))
    for _ in range(SCALE_WARMUP + 8):
        x = rng.normal(size=(streams, IN_DIM))
        y = (weights * x).sum(1, keepdims=True) + 0.1 * rng.normal(size=(streams, 1))
        engine.observe_arrays(ids, x, y, None)
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    engines = {k: build(k, args.streams, seed=0) for k in ("auto", "torch")}
    x = [np.random.default_rng(1).normal(size=IN_DIM)]
    reads: dict[str, Callable[[Engine], object]] = {
        "Engine.figures (GET /v1/streams/{id})": lambda e: e.figures("s7"),
        "Engine.predict (POST /predict)": lambda e: e.predict(["s7"], x),
    }
    table = Table(title=f"one-stream reads, {args.streams:,} linear-{IN_DIM} streams, us per call (best)")
    for column in ("read", "fused (auto)", "torch", "torch / fused"):
        table.add_column(column, justify="left" if column == "read" else "right")
    for name, read in reads.items():
        best = {k: float("inf") for k in engines}
        for _ in range(args.repeat):
            for k, engine in engines.items():
                seconds = timeit.timeit(functools.partial(read, engine), number=args.calls)
                best[k] = min(best[k], seconds / args.calls * 1e6)
        fused, torch = best["auto"], best["torch"]
        table.add_row(name, f"{fused:.1f}", f"{torch:.1f}", f"{torch / fused:.1f}x")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
