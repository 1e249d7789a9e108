"""Before/after of the WebSocket path: two checkouts' servers side by side, loaded in turn by the same client.

As bench.rest_ab does for REST: on a shared machine one run's rate swings with other jobs, so the two
checkouts are alternated round by round and the server's CPU time per observation is read beside the rate.
Each round, for each checkout: single observations pipelined on one connection (``--window`` in flight),
MessagePack column batches of 1,000 and JSON row batches of 1,000 (4 in flight each), from the lean client
(bench/wsclient.py).

    .venv/bin/python -m bench.ws_ab --before /path/to/main --after . [--rounds 3] [--seconds 4]

One checkout under two settings: ``--before . --after . --after-env TRACKIN_TORCH_THREADS=2``. ``--only
batch`` times the MessagePack batches alone: rounds are short, so more of them alternate, and it prints the
median of the rounds' after / before ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.http import Mix, Server, _columns_msgpack, _cpu_seconds, _create_streams, _rows_body
from bench.rest_ab import _served
from bench.wsclient import LeanWebSocket, encode_frame

__all__ = ["main"]


async def _measure(
    server: Server, frames: Sequence[bytes], per: int, window: int, seconds: float
) -> tuple[float, str]:
    host, port = server.url.removeprefix("http://").split(":")
    ws = await LeanWebSocket.connect(host, int(port))
    try:
        await ws.pipelined(frames, 0.5, window)  # warm-up
        before, client = _cpu_seconds(server.pid), time.process_time()
        latencies, elapsed, errors = await ws.pipelined(frames, seconds, window)
        n = len(latencies) * per
        server_us = (_cpu_seconds(server.pid) - before) / n * 1e6
        client_us = (time.process_time() - client) / n * 1e6
    finally:
        await ws.close()
    text = f"{n / elapsed:9,.0f} obs/s {server_us:6.1f} us/obs (client {client_us:4.1f}, errors {errors})"
    return n / elapsed, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout of the new code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--window", type=int, default=64, help="single observations in flight")
    parser.add_argument("--batch-window", type=int, default=16, help="batches of 1,000 in flight")
    parser.add_argument("--before-env", nargs="*", default=[], help="KEY=VALUE settings of the old server")
    parser.add_argument("--after-env", nargs="*", default=[], help="KEY=VALUE settings of the new server")
    parser.add_argument("--only", choices=["single", "batch", "rows"], help="this load alone")
    args = parser.parse_args(argv)
    envs = [dict(item.split("=", 1) for item in pairs) for pairs in (args.before_env, args.after_env)]
    mix = Mix.make(1000, 16, 40_000)
    names = mix.names
    singles = [
        encode_frame(
            orjson.dumps({"seq": k, "observations": [{"stream": names[s], "x": x, "y": y}]}), binary=False
        )
        for k, (s, x, y) in enumerate(
            zip(mix.ids[:4096].tolist(), mix.x[:4096].tolist(), mix.y[:4096].tolist(), strict=True)
        )
    ]
    batches = [encode_frame(_columns_msgpack(mix, k, k * 1000, 1000), binary=True) for k in range(32)]
    rows = [
        encode_frame(orjson.dumps({"seq": k, **_rows_body(mix, k * 1000, 1000)}), binary=False)
        for k in range(32)
    ]
    with contextlib.ExitStack() as stack:
        servers = {
            "before": stack.enter_context(_served(args.before.resolve(), env=envs[0])),
            "after": stack.enter_context(_served(args.after.resolve(), env=envs[1])),
        }
        loads = {"single": (singles, 1, args.window), "batch": (batches, 1000, args.batch_window)}
        loads["rows"] = (rows, 1000, args.batch_window)
        if args.only:
            loads = {args.only: loads[args.only]}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for server in servers.values():
            _create_streams(server.url, mix, 16)
        for round_ in range(args.rounds):
            for name, server in servers.items():
                figures = []
                for load, (frames, per, window) in loads.items():
                    rate, text = asyncio.run(_measure(server, frames, per, window, args.seconds))
                    figures.append(f"{load}: {text}")
                    rates[name].append(rate)
                print(f"round {round_ + 1} {name:6s} " + " | ".join(figures), flush=True)
    if len(loads) == 1:  # machine speed drifts: the ratio within each round, then their median
        ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
        print(f"after / before, {args.only}: median of rounds {statistics.median(ratios):.3f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
