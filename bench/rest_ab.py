"""Before/after of the REST request path: two checkouts' servers, alternated, under the same ``wrk`` load.

On a shared machine the rate of one run swings by 2x with other jobs; alternating the two checkouts (and the
floor) round by round, and reading the server's CPU time per request beside the rate, separates the change
from the machine. Each round: single observations (``wrk -c16``) and columnar batches of 1,000 (``-c2``) for
each checkout, then the floor (bench/floor.py) on uvicorn's two writes per answer and on one.

    .venv/bin/python -m bench.rest_ab --before /path/to/main --after . [--rounds 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

import bench.http as http
from bench.http import Mix, Server, _columns_body, _cpu_seconds, _create_streams, _single_requests
from bench.wrk import run_wrk, write_requests

__all__ = ["main"]


@contextlib.contextmanager
def _served(
    root: Path, *, floor: bool = False, one_write: bool = False, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """bench.http's server (or floor), run from the checkout at ``root`` (``env``: settings for it)."""
    saved_root, saved_path = http.ROOT, os.environ.get("PYTHONPATH", "")
    http.ROOT = root
    os.environ["PYTHONPATH"] = f"{root}:{root}/client"
    try:
        with http.serve(env, floor=floor, one_write=one_write) as server:
            yield server
    finally:
        http.ROOT = saved_root
        os.environ["PYTHONPATH"] = saved_path


def _measure(server: Server, folder: Path, count: int, connections: int, per: int, seconds: float) -> str:
    run_wrk(server.url, folder, count, connections=connections, seconds=1)  # warm-up
    before = _cpu_seconds(server.pid)
    result = run_wrk(server.url, folder, count, connections=connections, seconds=seconds)
    cpu = (_cpu_seconds(server.pid) - before) / (result.requests * per) * 1e6
    return f"{result.rate * per:9,.0f} obs/s {cpu:6.1f} us/obs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rest_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout of the new code")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    mix = Mix.make(1000, 16, 40_000)
    single = write_requests(_single_requests(mix, 1024))
    batches = [
        ("POST", "/v1/observations", orjson.dumps(_columns_body(mix, k * 1000, 1000))) for k in range(32)
    ]
    batch = write_requests(batches)
    setups: list[tuple[str, Path, dict[str, Any]]] = [
        ("before", args.before.resolve(), {}),
        ("after", args.after.resolve(), {}),
        ("floor", args.after.resolve(), {"floor": True}),
        ("floor, one write", args.after.resolve(), {"floor": True, "one_write": True}),
    ]
    for round_ in range(1, args.rounds + 1):
        for name, root, kwargs in setups:
            with _served(root, **kwargs) as server:
                line = f"round {round_} {name:16s} single, 16 conn: "
                if not kwargs:
                    _create_streams(server.url, mix, 16)
                line += _measure(server, single, 1024, 16, 1, args.seconds)
                if not kwargs:
                    line += " | batch 1,000 columns, 2 conn: " + _measure(
                        server, batch, 32, 2, 1000, args.seconds
                    )
                print(f"{line} | load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
