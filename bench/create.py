"""Stream creation benchmark: how fast streams are created, and whether that holds as the store fills.

    .venv/bin/python -m bench.create [--streams 100000] [--chunk 5000] [--probe 1000] [--clients 16]
                                     [--stores sqlite,redis] [--json out.json]

For each store (SQLite in WAL mode; a local ``redis-server`` with AOF and ``appendfsync always``), on a
real ``trackin serve`` subprocess over loopback (``bench/checkpoint.py``'s deployments), the store is filled
to ``--streams`` with the bulk call ``PUT /v1/streams`` (``--chunk`` linear streams per request). At 0, half
and all of ``--streams`` already stored, two probes:

- ``bulk``: the next ``--probe`` x 5 streams created with bulk calls;
- ``single``: the next ``--probe`` streams created one ``PUT /v1/streams/{id}`` each, ``--clients`` at a
  time (the path a client without the bulk call takes).

It prints the rate of each probe at each fill level, the ratio of the last level's rate to the first's (1.0:
creation does not slow as the store grows), and the whole fill's time (target: 100,000 in under 60 s).
Before, a creation's checkpoint pass scanned every resident stream, so single creations fell from 320/s to
46/s by 20,000 streams on SQLite (``service/durability/ledger.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench.checkpoint import deployment

__all__ = ["Probe", "main"]

SPEC = {"model": {"family": "linear", "in_dim": 8}}


@dataclass
class Probe:
    store: str
    kind: str  # "bulk" or "single"
    stored_before: int
    streams: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.streams / self.seconds


def _bulk_body(ids: list[str]) -> dict[str, object]:
    return {"streams": [{"id": s, "spec": SPEC} for s in ids]}


def _bulk(http: httpx.Client, ids: list[str], chunk: int) -> float:
    started = time.perf_counter()
    for at in range(0, len(ids), chunk):
        response = http.put("/v1/streams", json=_bulk_body(ids[at : at + chunk]))
        if response.status_code != 201:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


async def _single(url: str, ids: list[str], clients: int) -> float:
    queue = list(reversed(ids))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            stream_id = queue.pop()
            response = await http.put(f"/v1/streams/{stream_id}", json=SPEC)
            if response.status_code != 201:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started


def run_store(store: str, args: argparse.Namespace, base: Path) -> tuple[list[Probe], float]:
    probes: list[Probe] = []
    fill_seconds = 0.0
    levels = [0, args.streams // 2, args.streams]
    with deployment(base / store, store) as d:
        server = d.make({"TRACKIN_MEMORY_BUDGET": "off"}).start()
        with httpx.Client(base_url=server.url, timeout=300) as http:
            stored = 0
            for level in levels:
                fill = [f"fill-{i:07d}" for i in range(stored, level)]
                fill_seconds += _bulk(http, fill, args.chunk)
                stored = level
                bulk = [f"bulk-{level:07d}-{i:06d}" for i in range(args.probe * 5)]
                probes.append(Probe(store, "bulk", level, len(bulk), _bulk(http, bulk, args.chunk)))
                single = [f"single-{level:07d}-{i:06d}" for i in range(args.probe)]
                seconds = asyncio.run(_single(server.url, single, args.clients))
                probes.append(Probe(store, "single", level, len(single), seconds))
    return probes, fill_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--probe", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    console = Console()
    table = Table(
        title=f"Stream creation: rate (streams/s) with 0, {args.streams // 2:,}, {args.streams:,} stored"
    )
    for column in ("store", "call", "at 0", "at half", "at full", "full / 0", f"fill {args.streams:,}"):
        table.add_column(column, justify="right")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="trackin-bench-create-") as tmp:
        for store in args.stores.split(","):
            probes, fill = run_store(store, args, Path(tmp))
            for kind in ("bulk", "single"):
                rates = [p.rate for p in probes if p.kind == kind]
                table.add_row(
                    store, kind, *(f"{r:,.0f}" for r in rates), f"{rates[-1] / rates[0]:.2f}",
                    f"{fill:.1f} s" if kind == "bulk" else "",
                )  # fmt: skip
            results += [{**asdict(p), "rate": p.rate} for p in probes]
            results.append({"store": store, "fill_streams": args.streams, "fill_seconds": fill})
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
