"""What API keys cost on the hot path: single REST observations (``wrk``, 16 connections) against three
``trackin serve --store memory`` processes side by side, in alternating rounds on the same stream mix:

- open: no keys (the zero-setup default);
- keys: a bootstrap admin key sent as ``Authorization: Bearer`` on every request (verified once, then a
  dictionary lookup per request);
- keys + rate: the same, with a per-key rate limit too high to trip (``limits``, in-process counters).

Prints observations/s and the server's CPU per observation (less noisy than throughput on a shared machine),
each as the median of the rounds, and their ratios to the open server. Then the guard alone, in this
process (``service/security/guard.py`` around an empty app, median of 5 runs of 20,000 requests): what the
middleware adds per request in each setup, unaffected by the load generator.

    .venv/bin/python -m bench.auth [--seconds 3] [--rounds 3] [--streams 1000] [--inputs 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

import httpx

from bench.http import Mix, _cpu_seconds, _single_requests, serve
from bench.wrk import run_wrk, write_requests
from trackin.service.security.guard import Guard
from trackin.service.security.keyring import Keyring
from trackin.service.security.limiter import Limiter

__all__ = ["main"]

KEY = "bench-admin-key-" + "k" * 32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    mix = Mix.make(args.streams, args.inputs, 1024)
    keyed = {"TRACKIN_BOOTSTRAP_ADMIN_KEY": KEY}
    setups = {
        "open (no keys)": ({}, None),
        "keys": (keyed, KEY),
        "keys + rate limit": ({**keyed, "TRACKIN_RATE_LIMIT_PER_KEY": "10000000/second"}, KEY),
    }
    single = write_requests(_single_requests(mix, 1024))
    rates: dict[str, list[float]] = {name: [] for name in setups}
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(serve(env)) for name, (env, _) in setups.items()}
        for name, server in servers.items():
            key = setups[name][1]
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                for stream in mix.names:
                    spec = {"model": {"family": "linear", "in_dim": args.inputs}}
                    http.put(f"/v1/streams/{stream}", json=spec).raise_for_status()
            run_wrk(server.url, single, 1024, connections=args.connections, seconds=1, key=key)  # warm-up
        for _ in range(args.rounds):
            for name, server in servers.items():
                before = _cpu_seconds(server.pid)
                result = run_wrk(
                    server.url, single, 1024, connections=args.connections, seconds=args.seconds,
                    key=setups[name][1],
                )  # fmt: skip
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors")
                rates[name].append(result.rate)
                cpu[name].append((_cpu_seconds(server.pid) - before) / max(1, result.requests) * 1e6)
    base_rate, base_cpu = statistics.median(rates["open (no keys)"]), statistics.median(cpu["open (no keys)"])
    print(f"REST single observations, {args.connections} connections, median of {args.rounds} rounds")
    print(f"{'server':<20} {'obs/s':>9} {'x open':>7} {'server us/obs':>14} {'x open':>7}")
    for name in setups:
        rate, us = statistics.median(rates[name]), statistics.median(cpu[name])
        print(f"{name:<20} {rate:>9,.0f} {rate / base_rate:>7.2f} {us:>14.1f} {us / base_cpu:>7.2f}")
    print("\nthe guard alone, in process (us per request, median of 5 x 20,000)")
    for name, (keyring, limiter) in {
        "open (no keys)": (Keyring(None, 60.0), None),
        "keys": (Keyring(None, 60.0, KEY), None),
        "keys + rate limit": (Keyring(None, 60.0, KEY), Limiter("10000000/second", None)),
    }.items():
        cost = statistics.median(asyncio.run(_guard_cost(keyring, limiter)) for _ in range(5))
        print(f"{name:<20} {cost:>6.2f}")
    return 0


async def _guard_cost(keyring: Keyring, limiter: Limiter | None, n: int = 20_000) -> float:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    guard = Guard(app, lambda: keyring, lambda: limiter, [])
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"60"),
        (b"authorization", f"Bearer {KEY}".encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/v1/streams/s-1/observations", "headers": headers}
    started = time.perf_counter()
    for _ in range(n):
        await guard(dict(scope), None, None)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / n * 1e6


if __name__ == "__main__":
    raise SystemExit(main())
