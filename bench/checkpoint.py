"""Persistence benchmark: what checkpoints and the durability log cost ingestion; how fast state comes back.

    .venv/bin/python -m bench.checkpoint [--seconds 4] [--streams 1000] [--batch 1000] [--clients 3]
                                         [--rounds 5] [--restore-streams 100000] [--skip-lazy]
                                         [--only throughput|restore] [--json out.json]

Side by side in one run, each on a real ``trackin serve`` subprocess over loopback (the helpers of
``tests/support``, so a benchmark server is started exactly as the end-to-end tests start one):

- Ingestion throughput, batched REST: ``--streams`` linear streams (8 inputs), ``--clients`` concurrent
  clients each posting ``POST /v1/observations`` with ``--batch`` observations for random streams, waiting
  for each answer. Five configurations: no store (``--store memory``), then SQLite and Redis, each in
  ``checkpoint`` and ``log`` durability, with the default checkpoint settings (every 1,000 steps or 5 s).
  Redis is a local ``redis-server`` with AOF and ``appendfsync always`` (an acknowledged log append
  survives a Redis crash too); SQLite is WAL with ``synchronous=NORMAL`` (survives a trackin crash).
  Ratios are to no store. Target: ``log`` on SQLite and on Redis >= 0.8x. The five servers are started
  once and stay up; each of ``--rounds`` rounds drives every configuration for ``--seconds`` in turn
  (one configuration later each round, so none always runs first), and "vs no store (median of rounds)"
  is the median over the rounds of each round's rate over no store's in the same round: windows seconds
  apart, so a slow phase of a shared machine (some swing by 1.5x within minutes) hits both sides of a
  ratio. "best round" is each configuration's best window against no store's best. Beside the
  throughput, the server-side CPU per observation (the trackin process and its redis-server, from /proc
  over the measured window) and its ratio (no store's CPU / this one's): on a machine other work shares,
  the CPU an observation costs moves far less than the wall-clock rate.
- Restore of ``--restore-streams`` stored streams (``log`` durability, clean shutdown: empty log tails):
  eagerly at startup (``TRACKIN_RESTORE_EAGERLY=true``; time to ``/readyz`` minus a lazy server's start,
  and the same difference in the server's CPU time, with its redis-server's CPU meanwhile: the steady
  figures on a shared machine),
  and lazily on first use (requests of 1,000 distinct streams until all were touched, minus the same pass
  again with every stream resident).

The client runs on the same machine and shares its cores, as a co-located producer would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from tests.support.redis_server import RedisServer
from tests.support.server import TrackinServer
from trackin.service.store import SQLITE_FILENAME, Checkpoint, RedisStore, SQLiteStore, Store

__all__ = ["RestoreRow", "ThroughputRow", "main"]

IN_DIM = 8
SPEC = {"model": {"family": "linear", "in_dim": IN_DIM}}
BODIES = 16  # distinct request bodies cycled by the clients
QUIET = {"TRACKIN_LOG_LEVEL": "warning"}


@dataclass
class ThroughputRow:
    name: str
    observations: int
    seconds: float
    checkpoints: int
    cpu_seconds: float = float("nan")
    """CPU time of the server process and of its redis-server over the measured window."""
    ratio: float = float("nan")
    cpu_ratio: float = float("nan")
    round_ratio: float = float("nan")
    """Median over the rounds of this configuration's rate over no store's in the same round: pairs
    windows seconds apart, where the best-of-rounds ratio can pair a fast moment with a slow one."""

    @property
    def rate(self) -> float:
        return self.observations / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server-side CPU per observation (trackin + Redis), in microseconds."""
        return self.cpu_seconds / self.observations * 1e6


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RestoreRow:
    backend: str
    mode: str
    streams: int
    seconds: float
    mean_restore_ms: float
    cpu_seconds: float = float("nan")
    """Eager only: the server's CPU time at ``/readyz`` minus a lazy server's (the restore's own CPU, the
    steady figure on a shared machine), and its redis-server's CPU meanwhile."""
    store_cpu_seconds: float = float("nan")

    @property
    def rate(self) -> float:
        return self.streams / self.seconds if self.seconds > 0 else float("nan")


# ----- deployments ------------------------------------------------------------------------------------------


class Deployment:
    """A store (``memory``, ``sqlite`` or ``redis``) and the servers pointed at it."""

    def __init__(self, base: Path, backend: str) -> None:
        self.base = base
        self.backend = backend
        self.redis = RedisServer(base / "redis").start() if backend == "redis" else None
        self.servers: list[TrackinServer] = []

    def make(self, env: dict[str, str] | None = None) -> TrackinServer:
        """A server on this store, not started yet."""
        extra = {**QUIET, **(env or {})}
        args: list[str] = []
        if self.redis is not None:
            extra["TRACKIN_REDIS_URL"] = self.redis.url
        elif self.backend == "sqlite":
            args = ["--data-dir", str(self.base / "store")]  # a later --data-dir wins; logs stay apart
        server = TrackinServer(
            self.base / f"server-{len(self.servers)}",
            env=extra,
            args=args,
            store=self.backend,
            start_timeout=1800,  # an eager restore of 100,000 streams happens before /readyz
        )
        self.servers.append(server)
        return server

    def store(self) -> Store:
        """A client of the store itself, for seeding it."""
        if self.redis is not None:
            return RedisStore(self.redis.url)
        return SQLiteStore(self.base / "store" / SQLITE_FILENAME)

    def close(self) -> None:
        for server in self.servers:
            if server.running:
                server.kill()
            server.close()
        if self.redis is not None:
            self.redis.stop()


@contextmanager
def deployment(base: Path, backend: str) -> Iterator[Deployment]:
    d = Deployment(base, backend)
    try:
        yield d
    finally:
        d.close()


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples (and ``name{outcome=...}`` ones under ``name:outcome``) of ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f":{sample.labels['outcome']}" if "outcome" in sample.labels else "")
            if not sample.labels or "outcome" in sample.labels:
                out[key] = sample.value
    return out


async def _create(url: str, stream_ids: list[str], concurrency: int = 8) -> None:
    queue = list(stream_ids)

    async def worker(http: httpx.AsyncClient) -> None:
        while queue:
            stream_id = queue.pop()
            response = await http.put(f"/v1/streams/{stream_id}", json=SPEC)
            assert response.status_code in (200, 201), response.text

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))


# ----- throughput -------------------------------------------------------------------------------------------


def _bodies(streams: int, batch: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    ids = [f"s{i:05d}" for i in range(streams)]
    out = []
    for _ in range(BODIES):
        picks = rng.integers(0, streams, size=batch)
        x = rng.normal(size=(batch, IN_DIM)).round(6)
        y = rng.normal(size=batch).round(6)
        items = [
            {"stream": ids[p], "x": row, "y": float(t)}
            for p, row, t in zip(picks, x.tolist(), y, strict=True)
        ]
        out.append(orjson.dumps({"observations": items}))
    return out


async def _drive(
    url: str,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    per_body: int,
    pids: tuple[int | None, ...] = (),
) -> tuple[int, float, float]:
    """Post from ``clients`` concurrent clients for ``seconds``: observations answered, seconds taken, and
    the CPU seconds ``pids`` spent meanwhile."""
    done = 0
    stop_at = 0.0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal done
        n = i
        while time.perf_counter() < stop_at:
            response = await http.post(
                "/v1/observations",
                content=bodies[n % len(bodies)],
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
            done += per_body
            n += clients

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        stop_at = time.perf_counter() + min(1.0, seconds / 4)  # warm-up (pools grown, kernels compiled)
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        done = 0
        cpu = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - started
        return done, elapsed, sum(cpu_seconds(pid) for pid in pids) - cpu


@dataclass
class _Running:
    """One configuration's server, up for the whole throughput run."""

    name: str
    deployment: Deployment
    server: TrackinServer


def _start(stack: ExitStack, base: Path, backend: str, durability: str, streams: int) -> _Running:
    name = "no store" if backend == "memory" else f"{backend}, {durability}"
    d = stack.enter_context(deployment(base, backend))
    server = d.make({"TRACKIN_DURABILITY": durability}).start()
    asyncio.run(_create(server.url, [f"s{i:05d}" for i in range(streams)]))
    return _Running(name, d, server)


def throughput(running: _Running, bodies: list[bytes], args: argparse.Namespace) -> ThroughputRow:
    """One window of load on a running configuration."""
    server, d = running.server, running.deployment
    before = scrape(server.url).get("trackin_checkpoint_writes_total:accepted", 0.0)
    pids = (server.pid, d.redis.pid if d.redis is not None else None)
    observations, seconds, cpu = asyncio.run(
        _drive(server.url, bodies, args.clients, args.seconds, args.batch, pids)
    )
    after = scrape(server.url).get("trackin_checkpoint_writes_total:accepted", 0.0)
    return ThroughputRow(running.name, observations, seconds, int(after - before), cpu)


# ----- restore ----------------------------------------------------------------------------------------------


def populate(d: Deployment, n: int) -> None:
    """Store ``n`` streams: one real stream checkpointed by a server, then cloned under other ids."""
    seeder = d.make().start()
    with httpx.Client(base_url=seeder.url, timeout=30) as http:
        assert http.put("/v1/streams/seed", json=SPEC).status_code == 201
        rows = [{"x": [0.1 * i] * IN_DIM, "y": 0.5} for i in range(10)]
        assert http.post("/v1/streams/seed/observations", json=rows).status_code == 200
    assert seeder.stop() == 0

    async def clone() -> None:
        async with d.store() as store:
            seed = await store.read_checkpoint("seed")
            assert seed is not None
            for start in range(0, n, 1000):
                batch = [
                    Checkpoint(f"r{i:06d}", seed.epoch, seed.step, "", seed.meta, seed.tensors)
                    for i in range(start, min(n, start + 1000))
                ]
                outcome = await store.write_checkpoints(batch)
                assert not outcome.rejected
            await store.delete_stream("seed", seed.epoch)

    asyncio.run(clone())


def _ready_seconds(server: TrackinServer) -> float:
    started = time.perf_counter()
    server.start()
    return time.perf_counter() - started


async def _touch_all(url: str, n: int, per_request: int = 1000) -> float:
    """Post one observation to each of the ``n`` streams, ``per_request`` distinct streams at a time."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for start in range(0, n, per_request):
            items = [
                {"stream": f"r{i:06d}", "x": [0.25] * IN_DIM, "y": 0.5}
                for i in range(start, min(n, start + per_request))
            ]
            response = await http.post(
                "/v1/observations",
                content=orjson.dumps({"observations": items}),
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


def restore(base: Path, backend: str, args: argparse.Namespace, console: Console) -> list[RestoreRow]:
    n = args.restore_streams
    rows: list[RestoreRow] = []
    with deployment(base, backend) as d:
        t0 = time.perf_counter()
        populate(d, n)
        console.log(f"{backend}: stored {n:,} streams in {time.perf_counter() - t0:.1f} s")

        lazy = d.make()
        baseline = _ready_seconds(lazy)
        baseline_cpu = cpu_seconds(lazy.pid)
        if not args.skip_lazy:
            first = asyncio.run(_touch_all(lazy.url, n))
            metrics = scrape(lazy.url)
            second = asyncio.run(_touch_all(lazy.url, n))
            count = metrics.get("trackin_stream_restore_duration_seconds_count", 0.0)
            assert count >= n, f"only {count:.0f} of {n} streams restored"
            mean = metrics["trackin_stream_restore_duration_seconds_sum"] / count * 1e3
            rows.append(RestoreRow(backend, "lazy (first use)", n, first - second, mean))
        lazy.kill()

        eager = d.make({"TRACKIN_RESTORE_EAGERLY": "true"})
        redis_pid = d.redis.pid if d.redis is not None else None
        store_cpu = cpu_seconds(redis_pid)
        ready = _ready_seconds(eager)
        cpu = cpu_seconds(eager.pid) - baseline_cpu
        store_cpu = cpu_seconds(redis_pid) - store_cpu
        metrics = scrape(eager.url)
        count = metrics.get("trackin_stream_restore_duration_seconds_count", 0.0)
        assert count >= n, f"only {count:.0f} of {n} streams restored at start"
        mean = metrics["trackin_stream_restore_duration_seconds_sum"] / count * 1e3
        rows.append(RestoreRow(backend, "eager (at start)", n, ready - baseline, mean, cpu, store_cpu))
    return rows


# ----- report -----------------------------------------------------------------------------------------------


def _report(
    console: Console, rates: list[ThroughputRow], restores: list[RestoreRow], args: argparse.Namespace
) -> None:
    table = Table(
        title=f"Batched REST ingestion: {args.streams:,} linear streams, {args.clients} clients x "
        f"{args.batch:,} observations per request, {args.rounds} rounds of {args.seconds:g} s each"
    )
    columns = ("configuration", "observations/s (best round)", "vs no store (median of rounds)", "best round")
    for column in (*columns, "server CPU/obs", "vs no store (CPU)", "checkpoints written"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in rates:
        table.add_row(
            row.name,
            f"{row.rate:,.0f}",
            f"{row.round_ratio:.2f}x",
            f"{row.ratio:.2f}x",
            f"{row.cpu_us:.1f} us",
            f"{row.cpu_ratio:.2f}x",
            f"{row.checkpoints:,}",
        )
    console.print(table)
    if restores:
        table = Table(title=f"Restore of {args.restore_streams:,} stored streams (log durability)")
        restore_columns = (
            "backend",
            "when",
            "seconds",
            "streams/s",
            "mean per stream",
            "server CPU",
            "redis CPU",
        )
        for column in restore_columns:
            table.add_column(column, justify="left" if column in ("backend", "when") else "right")
        for r in restores:
            cpu = "" if math.isnan(r.cpu_seconds) else f"{r.cpu_seconds:.1f} s"
            measured = r.backend == "redis" and not math.isnan(r.store_cpu_seconds)
            store = f"{r.store_cpu_seconds:.1f} s" if measured else ""
            table.add_row(
                r.backend,
                r.mode,
                f"{r.seconds:.1f}",
                f"{r.rate:,.0f}",
                f"{r.mean_restore_ms:.3f} ms",
                cpu,
                store,
            )
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="each window of load")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="windows of load per configuration")
    parser.add_argument("--restore-streams", type=int, default=100_000)
    parser.add_argument("--skip-lazy", action="store_true", help="only the eager restore")
    parser.add_argument("--only", choices=["throughput", "restore"], help="run one half")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    console = Console()

    rates: list[ThroughputRow] = []
    restores: list[RestoreRow] = []
    with tempfile.TemporaryDirectory(prefix="trackin-bench-") as tmp:
        base = Path(tmp)
        if args.only in (None, "throughput"):
            configs = [("memory", "checkpoint"), ("sqlite", "checkpoint"), ("sqlite", "log")]
            configs += [("redis", "checkpoint"), ("redis", "log")]
            best: dict[str, ThroughputRow] = {}
            rounds: list[dict[str, ThroughputRow]] = []
            bodies = _bodies(args.streams, args.batch)
            with ExitStack() as stack:
                running = [
                    _start(stack, base / f"t{i}", b, d, args.streams) for i, (b, d) in enumerate(configs)
                ]
                for r in range(args.rounds):  # each round starts one configuration later
                    shift = r % len(running)
                    rounds.append({})
                    for one in running[shift:] + running[:shift]:
                        row = throughput(one, bodies, args)
                        rounds[-1][row.name] = row
                        console.log(
                            f"round {r + 1}, {row.name}: {row.rate:,.0f} observations/s, "
                            f"{row.cpu_us:.1f} us CPU each"
                        )
                        if row.name not in best or row.rate > best[row.name].rate:
                            best[row.name] = row
            rates = [best[one.name] for one in running]
            for row in rates:
                row.ratio = row.rate / rates[0].rate
                row.cpu_ratio = rates[0].cpu_us / row.cpu_us
                row.round_ratio = statistics.median(rs[row.name].rate / rs["no store"].rate for rs in rounds)
        if args.only in (None, "restore"):
            for backend in ("sqlite", "redis"):
                restores += restore(base / f"r-{backend}", backend, args, console)
    _report(console, rates, restores, args)
    if args.json is not None:
        payload: dict[str, Any] = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "throughput": [{**asdict(r), "rate": r.rate} for r in rates],
            "restore": [{**asdict(r), "rate": r.rate} for r in restores],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
