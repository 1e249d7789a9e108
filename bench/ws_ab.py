"""Before/after of the WebSocket path: two checkouts' servers side by side, loaded in turn by the same client.

As bench.rest_ab does for REST: on a shared machine one run's rate swings with other jobs, so the two
checkouts are alternated round by round and the server's CPU time per observation is read beside the rate.
Each round, for each checkout: single observations pipelined on one connection (``--window`` in flight),
MessagePack column batches of 1,000 and JSON row batches of 1,000 (4 in flight each), from the lean client
(bench/wsclient.py).

    .venv/bin/python -m bench.ws_ab --before /path/to/main --after . [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.http import Mix, Server, _columns_msgpack, _cpu_seconds, _create_streams, _rows_body
from bench.rest_ab import _served
from bench.wsclient import LeanWebSocket, encode_frame

__all__ = ["main"]


async def _measure(server: Server, frames: Sequence[bytes], per: int, window: int, seconds: float) -> str:
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
    return f"{n / elapsed:9,.0f} obs/s {server_us:6.1f} us/obs (client {client_us:4.1f}, errors {errors})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout of the new code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--window", type=int, default=64, help="single observations in flight")
    parser.add_argument("--batch-window", type=int, default=16, help="batches of 1,000 in flight")
    args = parser.parse_args(argv)
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
            "before": stack.enter_context(_served(args.before.resolve())),
            "after": stack.enter_context(_served(args.after.resolve())),
        }
        for server in servers.values():
            _create_streams(server.url, mix, 16)
        for round_ in range(args.rounds):
            for name, server in servers.items():
                single = asyncio.run(_measure(server, singles, 1, args.window, args.seconds))
                batch = asyncio.run(_measure(server, batches, 1000, args.batch_window, args.seconds))
                json_rows = asyncio.run(_measure(server, rows, 1000, args.batch_window, args.seconds))
                print(
                    f"round {round_ + 1} {name:6s} single: {single} | batch: {batch} | rows: {json_rows}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
