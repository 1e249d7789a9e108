"""End-to-end benchmark over loopback: a real ``trackin serve --store memory``, real HTTP/WebSocket clients.

Side by side in one run, on one stream mix (``--streams`` linear streams with ``--inputs`` features, each
observation for a random stream): single observations over REST at several concurrency levels, batches of
1,000 over REST, batched and single-observation WebSocket messages (unpaced, and paced at ``--rate``
messages/s for the latency target); observations/s, p50/p99 latency per request or message, and the ratio to
River's ``linear_model.LinearRegression`` (``predict_one`` then ``learn_one``) in this process on the same
observations.

    .venv/bin/python -m bench.http [--seconds 4] [--streams 1000] [--inputs 16] [--json out.json]

Targets: batched REST >= 2x River; one WebSocket connection with batched messages >= 1x; single-observation
WebSocket round trip p99 < 5 ms at 1,000 observations/s. The client runs on the same machine as the server
and shares its cores, as a co-located producer would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from trackin_client import AsyncTrackinClient, Observation

__all__ = ["Row", "main"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    observations: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_request: int
    river_ratio: float = float("nan")
    server_cpu_us: float = float("nan")  # server process CPU time per observation
    client_cpu_us: float = float("nan")  # this process's

    @property
    def rate(self) -> float:
        return self.observations / self.seconds if self.seconds > 0 else float("nan")


def _row(name: str, per_request: int, latencies: list[float], seconds: float) -> Row:
    lat = np.asarray(latencies) * 1e3
    p50, p99 = (np.percentile(lat, [50, 99]).tolist()) if lat.size else (float("nan"), float("nan"))
    return Row(name, per_request * len(latencies), seconds, p50, p99, per_request)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def serve(extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """A ``trackin serve --store memory`` subprocess on a free loopback port (e.g. for ``py-spy --pid``)."""
    port = _free_port()
    env = {**os.environ, "TRACKIN_LOG_LEVEL": "warning", **(extra_env or {})}
    command = [
        sys.executable,
        "-m",
        "trackin.service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen([*command, "--store", "memory", "--device", "cpu"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 60 s")
            time.sleep(0.1)
        yield Server(url, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Mix:
    """The stream mix: observation ``i`` is for stream ``ids[i]``, with features ``x[i]``, label ``y[i]``."""

    names: list[str]
    ids: np.ndarray  # [n] stream index
    x: np.ndarray  # [n, inputs]
    y: np.ndarray  # [n]

    @classmethod
    def make(cls, streams: int, inputs: int, n: int, *, cycle: bool = False, seed: int = 0) -> Mix:
        """``cycle``: streams take turns (a batch of ``streams`` observations holds each once); otherwise
        each observation is for a random stream (a batch of 1,000 over 1,000 streams holds one up to 5
        or 6 times, and the engine steps a stream's repeats in successive rounds)."""
        rng = np.random.default_rng(seed)
        weights = rng.normal(size=(streams, inputs))
        ids = np.arange(n) % streams if cycle else rng.integers(0, streams, n)
        x = rng.normal(size=(n, inputs))
        y = (weights[ids] * x).sum(axis=1) + 0.1 * rng.normal(size=n)
        return cls([f"bench-{i:05d}" for i in range(streams)], ids, x, y)

    def observations(self) -> list[Observation]:
        names = self.names
        return [
            {"stream": names[s], "x": xi, "y": yi}
            for s, xi, yi in zip(self.ids.tolist(), self.x.tolist(), self.y.tolist(), strict=True)
        ]


def river_rate(mix: Mix, seconds: float) -> float:
    """River ``LinearRegression`` per stream, ``predict_one`` + ``learn_one`` per observation, in-process."""
    from river import linear_model

    models = [linear_model.LinearRegression() for _ in mix.names]
    xs = [dict(enumerate(row)) for row in mix.x.tolist()]
    ys = mix.y.tolist()
    ids = mix.ids.tolist()
    done, started = 0, time.perf_counter()
    while True:
        for i in range(len(ids)):
            model = models[ids[i]]
            model.predict_one(xs[i])
            model.learn_one(xs[i], ys[i])
        done += len(ids)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


class _Feed:
    """Endless slices of the observations, shared by concurrent workers."""

    def __init__(self, observations: list[Observation]) -> None:
        self.observations = observations
        self.at = 0

    def take(self, k: int) -> list[Observation]:
        n = len(self.observations)
        out = [self.observations[(self.at + j) % n] for j in range(k)]
        self.at = (self.at + k) % n
        return out


async def _timed_workers(
    seconds: float, workers: int, one: Callable[[], Awaitable[None]]
) -> tuple[list[float], float]:
    """Run ``one`` in ``workers`` concurrent loops for ``seconds``: per-call latencies, elapsed time."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return latencies, time.perf_counter() - started


async def rest_single(client: AsyncTrackinClient, feed: _Feed, seconds: float, workers: int) -> Row:
    async def one() -> None:
        [obs] = feed.take(1)
        await client.observe(obs["stream"], {"x": obs["x"], "y": obs["y"]})

    latencies, elapsed = await _timed_workers(seconds, workers, one)
    return _row(f"REST single, {workers} concurrent", 1, latencies, elapsed)


async def rest_batch(client: AsyncTrackinClient, feed: _Feed, seconds: float, workers: int, size: int) -> Row:
    async def one() -> None:
        await client.observe_many(feed.take(size))

    latencies, elapsed = await _timed_workers(seconds, workers, one)
    return _row(f"REST batch {size:,}, {workers} concurrent", size, latencies, elapsed)


def _stopwatch(latencies: list[float], t0: float) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback recording the time since ``t0``."""

    def done(_: asyncio.Future[Any]) -> None:
        latencies.append(time.perf_counter() - t0)

    return done


async def ws_pipelined(client: AsyncTrackinClient, feed: _Feed, seconds: float, size: int) -> Row:
    """One connection, messages of ``size`` observations, up to 8 unanswered (the server's bound)."""
    latencies: list[float] = []
    async with client.ws(max_in_flight=8) as ws:
        started = time.perf_counter()
        stop = started + seconds
        last: asyncio.Future[Any] | None = None
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            last = await ws.submit(feed.take(size))
            last.add_done_callback(_stopwatch(latencies, t0))
        if last is not None:
            await last
        elapsed = time.perf_counter() - started
    what = "single" if size == 1 else f"batch {size:,}"
    return _row(f"WS {what}, 1 connection, pipelined", size, latencies, elapsed)


async def ws_paced(client: AsyncTrackinClient, feed: _Feed, seconds: float, rate: float) -> Row:
    """One connection, one observation per message, sent on a fixed schedule of ``rate`` messages/s."""
    latencies: list[float] = []
    pending: list[asyncio.Future[Any]] = []
    async with client.ws(max_in_flight=64) as ws:
        started = time.perf_counter()
        k = 0
        while (due := started + k / rate) < started + seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            future = await ws.submit(feed.take(1))
            future.add_done_callback(_stopwatch(latencies, t0))
            pending.append(future)
            k += 1
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
    return _row(f"WS single, paced at {rate:,.0f}/s", 1, latencies, elapsed)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measured(scenario: Awaitable[Row], server_pid: int) -> Row:
    """Run a scenario, adding the CPU time the server and this client spent per observation."""
    server, client = _cpu_seconds(server_pid), time.process_time()
    row = await scenario
    row.server_cpu_us = (_cpu_seconds(server_pid) - server) / row.observations * 1e6
    row.client_cpu_us = (time.process_time() - client) / row.observations * 1e6
    return row


async def run(args: argparse.Namespace, server: Server, mix: Mix) -> list[Row]:
    observations = mix.observations()
    feed = _Feed(observations)
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4, max_keepalive_connections=64)
    http = httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)
    async with AsyncTrackinClient(http=http) as client:
        spec = {"model": {"family": "linear", "in_dim": args.inputs}}
        gate = asyncio.Semaphore(16)

        async def create(name: str) -> None:
            async with gate:
                await client.create_stream(name, spec, replace=True)

        await asyncio.gather(*(create(name) for name in mix.names))
        await rest_batch(client, feed, 1.0, 1, 1000)  # warm-up: every stream has stepped
        await rest_single(client, feed, 0.5, 4)
        scenarios = [rest_single(client, feed, args.seconds, c) for c in args.concurrency]
        scenarios += [rest_batch(client, feed, args.seconds, c, 1000) for c in (1, 2)]
        scenarios += [ws_pipelined(client, feed, args.seconds, size) for size in (1000, 1)]
        scenarios.append(ws_paced(client, feed, args.seconds, args.rate))
        rows = [await _measured(scenario, server.pid) for scenario in scenarios]
    return rows


def _print(rows: list[Row], river: float, header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header)
    columns = (
        "obs/request",
        "observations",
        "obs/s",
        "p50 ms",
        "p99 ms",
        "x River",
        "server us/obs",
        "client us/obs",
    )
    for column in ("transport", *columns):
        table.add_column(column, justify="left" if column == "transport" else "right")
    for r in rows:
        table.add_row(
            r.name,
            f"{r.per_request:,}",
            f"{r.observations:,}",
            f"{r.rate:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.river_ratio:.2f}",
            f"{r.server_cpu_us:.1f}",
            f"{r.client_cpu_us:.1f}",
        )
    table.add_row("River LinearRegression, in-process", "1", "", f"{river:,.0f}", "", "", "1.00", "", "")
    Console(width=150).print(table)


def _targets(rows: list[Row], river: float, rate: float) -> list[str]:
    batched = max((r for r in rows if r.name.startswith("REST batch")), key=lambda r: r.rate)
    ws_batch = next(r for r in rows if r.name.startswith("WS batch"))
    paced = next(r for r in rows if "paced" in r.name)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        f"batched REST >= 2x River: {batched.rate / river:.2f}x ({batched.name}): "
        + verdict(batched.rate >= 2 * river),
        f"WS batched >= 1x River: {ws_batch.rate / river:.2f}x: {verdict(ws_batch.rate >= river)}",
        f"WS single p99 < 5 ms at {rate:,.0f}/s: p99 {paced.p99_ms:.2f} ms at {paced.rate:,.0f} obs/s: "
        + verdict(paced.p99_ms < 5 and paced.rate >= 0.95 * rate),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rate", type=float, default=1000.0, help="paced WebSocket messages/s")
    parser.add_argument(
        "--mix",
        choices=["random", "cycle"],
        default="random",
        help="each observation for a random stream, or streams taking turns",
    )
    parser.add_argument("--torch-threads", type=int, help="the server's TRACKIN_TORCH_THREADS")
    parser.add_argument("--breakdown", action="store_true", help="also time each stage of a batch alone")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    mix = Mix.make(args.streams, args.inputs, 100_000, cycle=args.mix == "cycle")
    river = river_rate(mix, min(args.seconds, 3.0))
    env = {"TRACKIN_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else None
    with serve(env) as server:
        rows = asyncio.run(run(args, server, mix))
    for r in rows:
        r.river_ratio = r.rate / river
    load = os.getloadavg()[0]
    header = (
        f"trackin over loopback: {args.streams:,} linear streams x {args.inputs} inputs ({args.mix} mix), "
        f"{args.seconds:g} s each, {os.cpu_count()} CPUs, load {load:.1f}"
        + (f", server TRACKIN_TORCH_THREADS={args.torch_threads}" if args.torch_threads else "")
    )
    _print(rows, river, header)
    for line in _targets(rows, river, args.rate):
        print(line)
    if args.breakdown:
        from bench.http_stages import stage_costs

        costs = stage_costs(
            mix.names, mix.observations()[:1000], args.inputs, threads=args.torch_threads or 1
        )
        print("\nOne request of 1,000 observations, each stage alone in this process (us per observation):")
        for name, micros in costs:
            print(f"  {name:46s} {micros:7.2f}")
        print(f"  {'River LinearRegression predict_one + learn_one':46s} {1e6 / river:7.2f}")
    if args.json is not None:
        payload = {"river_obs_per_s": river, "rows": [asdict(r) | {"obs_per_s": r.rate} for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
