"""Cluster mode: throughput of 1, 2 and 3 replicas, and the latency of the extra hop.

    python -m bench.cluster [--seconds 6] [--streams 300] [--per-request 20] [--clients 24]

For each replica count: a fresh nats-server, redis-server and N ``trackin serve`` replicas (real processes,
loopback), the same streams, clients posting ``--per-request`` observations of one stream per request to
random replicas for ``--seconds``; observations acknowledged per second, beside a single node in ``log``
durability on the same Redis (the durable single-node configuration a cluster replaces).

Then, with the largest cluster, one client and one observation per request: the latency of a write sent
to the stream's owner (an owner-aware client, from ``GET /v1/cluster/partitions``) and to another replica
(the extra hop: the owner's answer comes back through NATS), and the same for reads. And ``--many`` streams
of several partitions observed at once: one ``POST /v1/observations`` (checked by every owner, then logged
per partition) beside the same observations as one single-stream request each, sent one after another.
And one WebSocket connection sending ``--ws-messages`` messages of ``--many`` streams, lock-step (each after
the previous answer) and pipelined (up to 32 unanswered), in the same run.

Caveat: this machine has 2 cores, shared by every replica, NATS, Redis and the clients, so more replicas
cannot run faster here; the figures show the cost of the log and the hop, not the scaling. On paper, with a
core or more per replica, throughput grows with the replica count until NATS or Redis saturates: each
write costs one JetStream publish (a few microseconds of NATS CPU, one fsync batch per flush) and one
NATS message for the answer; a checkpoint per stream every ``checkpoint_every_steps`` observations.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from tests.cluster import Cluster, Load, create_streams, partition
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import TrackinServer


async def _throughput(
    urls: list[str], streams: list[str], per_request: int, clients: int, seconds: float
) -> float:
    """Observations acknowledged per second by ``clients`` clients posting to random replicas."""
    load = Load(streams, seed=7)
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as http:

        async def client(i: int) -> None:
            nonlocal done
            rng = random.Random(i)
            while time.monotonic() < stop:
                stream = rng.choice(streams)
                body = [load.observation() for _ in range(per_request)]
                response = await http.post(f"{rng.choice(urls)}/v1/streams/{stream}/observations", json=body)
                if response.status_code == 200:
                    done += per_request

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done / (time.monotonic() - started)


def _latencies(urls: dict[str, str], owners: list[str], streams: list[str], n: int) -> dict[str, float]:
    """Median milliseconds of a write and a read sent to the owner and to another replica."""
    load = Load(streams, seed=9)
    out: dict[str, list[float]] = {"write owner": [], "write other": [], "read owner": [], "read other": []}
    with httpx.Client(timeout=10) as http:
        for i in range(n):
            stream = streams[i % len(streams)]
            owner = owners[partition(stream)]
            other = next(name for name in urls if name != owner)
            for where, name in (("owner", owner), ("other", other)):
                started = time.perf_counter()
                r = http.post(f"{urls[name]}/v1/streams/{stream}/observations", json=load.observation())
                out[f"write {where}"].append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                started = time.perf_counter()
                r = http.get(f"{urls[name]}/v1/streams/{stream}")
                out[f"read {where}"].append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
    return {k: 1000 * statistics.median(v) for k, v in out.items()}


def _many(urls: list[str], streams: list[str], many: int, n: int) -> dict[str, float]:
    """Median milliseconds to observe ``many`` streams once: one multi-stream request, or one each."""
    load = Load(streams, seed=11)
    out: dict[str, list[float]] = {"one request": [], "one each": []}
    with httpx.Client(timeout=10) as http:
        for i in range(n):
            url = urls[i % len(urls)]
            named = [streams[(i * many + k) % len(streams)] for k in range(many)]
            items = [{"stream": s, **load.observation()} for s in named]
            started = time.perf_counter()
            r = http.post(f"{url}/v1/observations", json=items)
            out["one request"].append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
            started = time.perf_counter()
            for item in items:
                single = {"x": item["x"], "y": item["y"]}
                r = http.post(f"{url}/v1/streams/{item['stream']}/observations", json=single)
                assert r.status_code == 200, r.text
            out["one each"].append(time.perf_counter() - started)
    return {k: 1000 * statistics.median(v) for k, v in out.items()}


async def _ws(url: str, streams: list[str], messages: int, per_message: int, window: int) -> dict[str, float]:
    """Messages answered per second on one WebSocket connection through one replica: lock-step (each sent
    after the previous answer) and pipelined (up to ``window`` unanswered), the same messages each way."""
    from websockets.asyncio.client import connect

    load, rng = Load(streams, seed=13), random.Random(13)

    def frame(seq: int) -> str:
        items = [{"stream": rng.choice(streams), **load.observation()} for _ in range(per_message)]
        return orjson.dumps({"seq": seq, "observations": items}).decode()

    out: dict[str, float] = {}
    async with connect(url.replace("http://", "ws://") + "/v1/ws", open_timeout=10) as ws:
        started = time.perf_counter()
        for seq in range(messages):
            await ws.send(frame(seq))
            assert "results" in orjson.loads(await ws.recv())
        out["lock-step"] = messages / (time.perf_counter() - started)
        started = time.perf_counter()
        sent = answered = 0
        while answered < messages:
            while sent < messages and sent - answered < window:
                await ws.send(frame(sent))
                sent += 1
            assert "results" in orjson.loads(await ws.recv())
            answered += 1
        out["pipelined"] = messages / (time.perf_counter() - started)
    return out


def _single_node(base: Path, args: argparse.Namespace) -> float:
    with RedisServer(base / "redis-single") as redis:
        env = {"TRACKIN_REDIS_URL": redis.url, "TRACKIN_KERNELS": "torch", "TRACKIN_DURABILITY": "log"}
        with TrackinServer(base / "single", env=env, store="redis") as server:
            with httpx.Client(timeout=30) as http:
                streams = [f"b-{i}" for i in range(args.streams)]
                for s in streams:
                    assert http.put(f"{server.url}/v1/streams/{s}", json=_spec()).status_code == 201
            return asyncio.run(
                _throughput([server.url], streams, args.per_request, args.clients, args.seconds)
            )


def _spec() -> dict[str, Any]:
    from tests.cluster import SPEC

    return dict(SPEC)


def _cluster(
    base: Path, replicas: int, args: argparse.Namespace, latency: bool
) -> tuple[float, dict[str, float]]:
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis") as redis:
        cluster = Cluster(base, nats, redis)
        try:
            cluster.add(replicas)
            cluster.wait_ready(timeout=60)
            streams = create_streams(cluster, "b", args.streams)
            urls = [r.url for r in cluster.live()]
            rate = asyncio.run(_throughput(urls, streams, args.per_request, args.clients, args.seconds))
            hops: dict[str, float] = {}
            if latency and replicas > 1:
                mapped = cluster.map()
                hops = _latencies(mapped["replicas"], mapped["owners"], streams, args.latency_requests)
                hops |= _many(urls, streams, args.many, args.latency_requests // 4)
                hops |= asyncio.run(_ws(urls[0], streams, args.ws_messages, args.many, window=32))
            return rate, hops
        finally:
            for replica in cluster.replicas:
                replica.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--per-request", type=int, default=20)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, comma-separated")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--many", type=int, default=8, help="streams in one multi-stream request")
    parser.add_argument("--ws-messages", type=int, default=300, help="WebSocket messages, each way")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.replicas.split(",")]
    console = Console()
    with tempfile.TemporaryDirectory(prefix="trackin-bench-cluster-") as tmp:
        base = Path(tmp)
        single = _single_node(base / "single-node", args)
        rows = []
        hops: dict[str, float] = {}
        for n in counts:
            rate, measured = _cluster(base / f"cluster-{n}", n, args, latency=n == max(counts))
            hops = measured or hops
            rows.append((n, rate))
    table = Table(
        title=f"cluster throughput ({args.per_request} observations per request, {args.clients} clients)"
    )
    for column in ("configuration", "observations/s", "vs single node", "vs 1 replica"):
        table.add_column(column, justify="right")
    table.add_row("single node, Redis log", f"{single:,.0f}", "1.00x", "")
    for n, rate in rows:
        table.add_row(f"{n} replica(s)", f"{rate:,.0f}", f"{rate / single:.2f}x", f"{rate / rows[0][1]:.2f}x")
    console.print(table)
    if hops:
        lat = Table(title="latency of one request (median ms): owner-aware vs through another replica")
        for column in ("", "to the owner", "to another replica", "extra hop"):
            lat.add_column(column, justify="right")
        for kind in ("write", "read"):
            owner, other = hops[f"{kind} owner"], hops[f"{kind} other"]
            lat.add_row(kind, f"{owner:.2f}", f"{other:.2f}", f"{other - owner:+.2f}")
        console.print(lat)
        both = Table(title=f"observing {args.many} streams once (median ms, through any replica)")
        for column in ("one POST /v1/observations", "one request per stream", "ratio"):
            both.add_column(column, justify="right")
        one, each = hops["one request"], hops["one each"]
        both.add_row(f"{one:.2f}", f"{each:.2f}", f"{each / one:.2f}x")
        console.print(both)
        ws = Table(title=f"one WebSocket connection, {args.many} streams a message (messages/s)")
        for column in ("lock-step", "pipelined (32 in flight)", "ratio"):
            ws.add_column(column, justify="right")
        lock, piped = hops["lock-step"], hops["pipelined"]
        ws.add_row(f"{lock:,.0f}", f"{piped:,.0f}", f"{piped / lock:.2f}x")
        console.print(ws)
    console.print(
        "2 shared cores: every replica, NATS, Redis and the clients compete for them (see docstring)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
