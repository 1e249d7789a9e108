"""End-to-end benchmark over loopback: a real ``trackin serve --store memory``, with low-overhead load.

Side by side in one run, on one stream mix (``--streams`` linear streams with ``--inputs`` features, each
observation for a random stream):

- REST single observations from ``wrk`` (bench/wrk.py, bench/requests.lua) at each ``--connections``,
  against trackin and against the floor (bench/floor.py: a bare FastAPI endpoint on the same uvicorn
  settings, parsing the same body with orjson and answering a result of the same shape); ``x floor``;
- reads (``GET /v1/streams/{id}``, ``/predict``, ``/healthz``) from ``wrk``;
- REST batches of 1,000 (JSON rows, JSON columns, and MessagePack columns with raw float buffers) from
  ``wrk`` over 2 connections;
- one WebSocket connection from a lean asyncio client (bench/wsclient.py): batches of 1,000 as MessagePack
  columns (raw float buffers) and as JSON rows (16 in flight), single observations pipelined (256 in flight,
  the server's default bound), and single observations paced at ``--rate`` messages/s (the latency target),
  in ``--paced-windows`` windows taking turns with the same load on the floor's WebSocket endpoint;

with observations/s, p50/p99 per request or message, the server's CPU per observation and the ratio to
River's ``linear_model.LinearRegression`` (``predict_one`` then ``learn_one``, one model per stream) in this
process on the same observations.

    .venv/bin/python -m bench.http [--seconds 4] [--streams 1000] [--inputs 16] [--rate 1000]
                                   [--paced-windows 3] [--json out.json]

Targets (issue 11): single REST >= 0.7x the floor at 16 connections; batched REST >= 2x River; one WebSocket
connection with batched messages >= 3x River; WebSocket single pipelined >= 20,000 obs/s; paced WebSocket
single p99 < 2 ms at 1,000/s. The load generators run on the same machine and share its cores.
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import orjson

from bench.wrk import WrkResult, run_wrk, write_requests
from bench.wsclient import LeanWebSocket, encode_frame

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
    floor_ratio: float = float("nan")  # rate / the floor's rate under the same load
    client_cpu_us: float = float("nan")  # the load generator's CPU time per observation (WebSocket rows)
    errors: int = 0
    river: float | None = None  # River's rate around this row (batched rows: `_around`)

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
def serve(
    extra_env: dict[str, str] | None = None, *, floor: bool = False, one_write: bool = False
) -> Iterator[Server]:
    """A ``trackin serve --store memory`` subprocess on a free loopback port (e.g. for ``py-spy --pid``);
    ``floor``: the bare FastAPI endpoint of bench/floor.py instead (``one_write``: on trackin's protocol
    that joins an answer's head and body in one socket write)."""
    port = _free_port()
    env = {**os.environ, "TRACKIN_LOG_LEVEL": "warning", **(extra_env or {})}
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if floor:
        command = [sys.executable, "-m", "bench.floor", *host, *(["--one-write"] if one_write else [])]
    else:
        command = [sys.executable, "-m", "trackin.service.cli", "serve", *host, "--store", "memory"]
        command += ["--device", "cpu"]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
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


_BESIDE_SECONDS = 2.0
"""River is timed again just before and just after each batched row, and that row's ratio is to the mean
of the two: the machine's speed drifts by tens of percent over the minutes of a run (shared cores; on one
VM River's rate moved between 173k and 244k obs/s within a minute), and a ratio should compare one
minute's figures. One timing before the row alone put a row at 1.83x that five windows interleaved with
River put at 2.22-2.90x (docs/engine.md, "Fourteenth session")."""


def _around(mix: Mix, before: float) -> float:
    """River's rate around a row: the mean of its timing just before the row and one now, just after."""
    return (before + river_rate(mix, _BESIDE_SECONDS)) / 2


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


def _single_requests(mix: Mix, k: int) -> list[tuple[str, str, bytes]]:
    return [
        ("POST", f"/v1/streams/{mix.names[s]}/observations", orjson.dumps({"x": x, "y": y}))
        for s, x, y in zip(mix.ids[:k].tolist(), mix.x[:k].tolist(), mix.y[:k].tolist(), strict=True)
    ]


def _rows_body(mix: Mix, start: int, size: int) -> dict[str, Any]:
    part = slice(start, start + size)
    names = mix.names
    return {
        "observations": [
            {"stream": names[s], "x": x, "y": y}
            for s, x, y in zip(
                mix.ids[part].tolist(), mix.x[part].tolist(), mix.y[part].tolist(), strict=True
            )
        ]
    }


def _columns_body(mix: Mix, start: int, size: int) -> dict[str, Any]:
    part = slice(start, start + size)
    return {
        "streams": [mix.names[s] for s in mix.ids[part].tolist()],
        "x": mix.x[part].tolist(),
        "y": mix.y[part].tolist(),
    }


def _columns_msgpack(mix: Mix, seq: int | None, start: int, size: int) -> bytes:
    """A columnar MessagePack body with raw little-endian float buffers (``seq``: a WebSocket message's)."""
    part = slice(start, start + size)
    body = {
        "streams": [mix.names[s] for s in mix.ids[part].tolist()],
        "x": np.ascontiguousarray(mix.x[part], "<f8").tobytes(),
        "y": np.ascontiguousarray(mix.y[part], "<f8").tobytes(),
    }
    return msgspec.msgpack.encode(body if seq is None else {"seq": seq, **body})


def _wrk_row(name: str, per_request: int, result: WrkResult) -> Row:
    return Row(
        name,
        result.requests * per_request,
        result.seconds,
        result.p50_ms,
        result.p99_ms,
        per_request,
        errors=result.errors,
    )


def _wrk(
    server: Server, name: str, per_request: int, folder: Path, count: int, connections: int, seconds: float
) -> Row:
    """A ``wrk`` run as a row, with the CPU time the server spent per observation."""
    before = _cpu_seconds(server.pid)
    row = _wrk_row(
        name, per_request, run_wrk(server.url, folder, count, connections=connections, seconds=seconds)
    )
    row.server_cpu_us = (_cpu_seconds(server.pid) - before) / max(1, row.observations) * 1e6
    return row


def rest_rows(
    args: argparse.Namespace, server: Server, floor: Server, floor_one_write: Server, mix: Mix
) -> list[Row]:
    seconds = args.seconds
    single = write_requests(_single_requests(mix, 1024))
    for warm in (server, floor, floor_one_write):
        run_wrk(warm.url, single, 1024, connections=16, seconds=1)
    rows: list[Row] = []
    for c in args.connections:
        base = _wrk(floor, f"floor: bare FastAPI, single, {c} conn", 1, single, 1024, c, seconds)
        mine = _wrk(server, f"REST single, {c} conn", 1, single, 1024, c, seconds)
        joined = _wrk(floor_one_write, f"floor, one write per answer, {c} conn", 1, single, 1024, c, seconds)
        mine.floor_ratio = mine.rate / base.rate
        joined.floor_ratio = joined.rate / base.rate
        base.floor_ratio = 1.0
        rows += [base, mine, joined]
    names = [mix.names[s] for s in mix.ids[:256].tolist()]
    xs = mix.x[:256].tolist()
    reads = {
        "GET /v1/streams/{id}": [("GET", f"/v1/streams/{n}", b"") for n in names],
        "POST /predict": [
            ("POST", f"/v1/streams/{n}/predict", orjson.dumps({"x": x}))
            for n, x in zip(names, xs, strict=True)
        ],
        "GET /healthz": [("GET", "/healthz", b"")],
    }
    for what, requests in reads.items():
        folder = write_requests(requests)
        result = run_wrk(server.url, folder, len(requests), connections=16, seconds=seconds)
        rows.append(_wrk_row(f"{what}, 16 conn", 1, result))
    size, count = 1000, 32
    for form, make in (("rows", _rows_body), ("columns", _columns_body)):
        folder = write_requests(
            [("POST", "/v1/observations", orjson.dumps(make(mix, k * size, size))) for k in range(count)]
        )
        river = river_rate(mix, _BESIDE_SECONDS)
        rows.append(_wrk(server, f"REST batch 1,000 ({form}), 2 conn", size, folder, count, 2, seconds))
        rows[-1].river = _around(mix, river)
    packed = [("POST", "/v1/observations", _columns_msgpack(mix, None, k * size, size)) for k in range(count)]
    folder = write_requests(packed, content_type="application/msgpack")
    river = river_rate(mix, _BESIDE_SECONDS)
    rows.append(_wrk(server, "REST batch 1,000 (msgpack columns), 2 conn", size, folder, count, 2, seconds))
    rows[-1].river = _around(mix, river)
    return rows


def _ws_row(name: str, per_message: int, outcome: tuple[list[float], float, int]) -> Row:
    latencies, elapsed, errors = outcome
    lat = np.asarray(latencies) * 1e3
    p50, p99 = np.percentile(lat, [50, 99]).tolist() if lat.size else (float("nan"), float("nan"))
    return Row(name, per_message * len(latencies), elapsed, p50, p99, per_message, errors=errors)


_BATCH_WINDOW = 16


async def ws_rows(args: argparse.Namespace, server: Server, floor: Server, mix: Mix) -> list[Row]:
    host, port = server.url.removeprefix("http://").split(":")
    names = mix.names
    batch_frames = [encode_frame(_columns_msgpack(mix, k, k * 1000, 1000), binary=True) for k in range(32)]
    json_frames = [
        encode_frame(orjson.dumps({"seq": k, **_rows_body(mix, k * 1000, 1000)}), binary=False)
        for k in range(32)
    ]
    singles = [
        encode_frame(
            orjson.dumps({"seq": k, "observations": [{"stream": names[s], "x": x, "y": y}]}), binary=False
        )
        for k, (s, x, y) in enumerate(
            zip(mix.ids[:4096].tolist(), mix.x[:4096].tolist(), mix.y[:4096].tolist(), strict=True)
        )
    ]
    rows = []
    # Batches: 16 messages in flight. With 4, the answers' round trip through the client left the engine
    # thread idle a fifth of the time (docs/engine.md, "The engine thread's next batch, queued ahead").
    scenarios: list[tuple[str, int, Any]] = [
        (
            "WS batch 1,000 (msgpack columns), 1 conn",
            1000,
            lambda ws: ws.pipelined(batch_frames, args.seconds, _BATCH_WINDOW),
        ),
        (
            "WS batch 1,000 (JSON rows), 1 conn",
            1000,
            lambda ws: ws.pipelined(json_frames, args.seconds, _BATCH_WINDOW),
        ),
        # as many in flight as the server reads ahead by default (TRACKIN_MAX_WS_IN_FLIGHT)
        ("WS single, 1 conn, pipelined", 1, lambda ws: ws.pipelined(singles, args.seconds, 256)),
    ]
    for name, per, scenario in scenarios:
        river = river_rate(mix, _BESIDE_SECONDS) if per > 1 else None
        ws = await LeanWebSocket.connect(host, int(port))
        before, client_before = _cpu_seconds(server.pid), time.process_time()
        row = _ws_row(name, per, await scenario(ws))
        row.server_cpu_us = (_cpu_seconds(server.pid) - before) / max(1, row.observations) * 1e6
        row.client_cpu_us = (time.process_time() - client_before) / max(1, row.observations) * 1e6
        await ws.close()
        row.river = None if river is None else _around(mix, river)
        rows.append(row)
    return rows + await _paced_rows(args, server, floor, singles)


async def _paced_rows(
    args: argparse.Namespace, server: Server, floor: Server, frames: list[bytes]
) -> list[Row]:
    """Single observations paced at ``--rate``, on trackin and on the floor (its one-write variant: trackin's
    protocols) in turns: ``--paced-windows`` windows of ``--seconds`` each, the order swapped every window,
    so a slow phase of a shared machine falls on both. Each row pools its windows' round trips. The floor's
    latency is what the machine, the client and uvicorn add to any endpoint's (on a VM whose wake-ups are
    slow its p99 alone reached 2.8 ms: docs/engine.md, "Twelfth session")."""
    name = f"WS single, paced at {args.rate:,.0f}/s"
    targets = [(name, server), (f"floor, one write per answer: {name}", floor)]
    pooled: dict[str, tuple[list[float], list[float], list[int], list[float], list[float]]] = {
        label: ([], [], [], [], []) for label, _ in targets
    }
    for window in range(args.paced_windows):
        for label, target in targets if window % 2 == 0 else targets[::-1]:
            host, port = target.url.removeprefix("http://").split(":")
            ws = await LeanWebSocket.connect(host, int(port))
            before, client_before = _cpu_seconds(target.pid), time.process_time()
            latencies, elapsed, errors = await ws.paced(frames, args.seconds, args.rate)
            server_cpu, client_cpu = _cpu_seconds(target.pid) - before, time.process_time() - client_before
            await ws.close()
            into = pooled[label]
            into[0].extend(latencies)
            into[1].append(elapsed)
            into[2].append(errors)
            into[3].append(server_cpu)
            into[4].append(client_cpu)
    rows = []
    for label, (trips, windows, failed, server_cpus, client_cpus) in pooled.items():
        row = _ws_row(label, 1, (trips, sum(windows), sum(failed)))
        row.server_cpu_us = sum(server_cpus) / max(1, row.observations) * 1e6
        row.client_cpu_us = sum(client_cpus) / max(1, row.observations) * 1e6
        rows.append(row)
    return rows


def _create_streams(url: str, mix: Mix, inputs: int) -> None:
    spec = {"model": {"family": "linear", "in_dim": inputs}}
    with httpx.Client(base_url=url, timeout=60) as http:
        for name in mix.names:
            response = http.put(f"/v1/streams/{name}", json=spec, params={"replace": "true"})
            response.raise_for_status()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print(rows: list[Row], river: float, header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header)
    columns = (
        "obs/request",
        "obs/s",
        "p50 ms",
        "p99 ms",
        "x floor",
        "x River",
        "server us/obs",
        "client us/obs",
        "errors",
    )
    for column in ("load", *columns):
        table.add_column(column, justify="left" if column == "load" else "right")
    for r in rows:
        table.add_row(
            r.name,
            f"{r.per_request:,}",
            f"{r.rate:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            "" if r.floor_ratio != r.floor_ratio else f"{r.floor_ratio:.2f}",
            f"{r.river_ratio:.2f}",
            "" if r.server_cpu_us != r.server_cpu_us else f"{r.server_cpu_us:.1f}",
            "" if r.client_cpu_us != r.client_cpu_us else f"{r.client_cpu_us:.1f}",
            str(r.errors),
        )
    table.add_row("River LinearRegression, in-process", "1", f"{river:,.0f}", "", "", "", "1.00", "", "", "")
    Console(width=180).print(table)


def _targets(rows: list[Row], river: float, rate: float) -> list[str]:
    def find(prefix: str) -> Row:
        return next(r for r in rows if r.name.startswith(prefix))

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    single = find("REST single, 16 conn") if any(r.name.startswith("REST single, 16") for r in rows) else None
    batched = max((r for r in rows if r.name.startswith("REST batch")), key=lambda r: r.river_ratio)
    ws_batch = max((r for r in rows if r.name.startswith("WS batch")), key=lambda r: r.river_ratio)
    pipelined, paced = find("WS single, 1 conn"), find("WS single, paced")
    paced_floor = find("floor, one write per answer: WS single, paced")
    lines = []
    if single is not None:
        base, joined = find("floor: bare FastAPI, single, 16"), find("floor, one write per answer, 16")
        lines.append(
            f"single REST >= 0.7x floor (16 conn): {single.floor_ratio:.2f}x: "
            + verdict(single.floor_ratio >= 0.7)
            + f" (x the one-write floor: {single.rate / joined.rate:.2f}; server CPU per request, trackin / "
            f"floor / one-write floor: {single.server_cpu_us:.0f} / {base.server_cpu_us:.0f} / "
            f"{joined.server_cpu_us:.0f} us)"
        )
    json_columns = find("REST batch 1,000 (columns)")
    lines += [
        f"batched REST >= 2x River: {batched.river_ratio:.2f}x ({batched.name}): "
        + verdict(batched.river_ratio >= 2)
        + f"; JSON columns {json_columns.river_ratio:.2f}x",
        f"WS batched >= 3x River: {ws_batch.river_ratio:.2f}x ({ws_batch.name}): "
        + verdict(ws_batch.river_ratio >= 3),
        f"WS single pipelined >= 20,000 obs/s: {pipelined.rate:,.0f}: {verdict(pipelined.rate >= 20_000)}",
        f"WS single p99 < 2 ms at {rate:,.0f}/s: p99 {paced.p99_ms:.2f} ms at {paced.rate:,.0f} obs/s: "
        + verdict(paced.p99_ms < 2 and paced.rate >= 0.95 * rate)
        + f" (the floor in windows beside it: p50 {paced_floor.p50_ms:.2f}, p99 {paced_floor.p99_ms:.2f} ms; "
        f"server CPU per message, trackin / floor: {paced.server_cpu_us:.0f} / "
        f"{paced_floor.server_cpu_us:.0f} us)",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 16], help="wrk connections, single REST"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="paced WebSocket messages/s")
    parser.add_argument(
        "--paced-windows", type=int, default=3, help="paced windows each for trackin and the floor, in turns"
    )
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

    mix = Mix.make(args.streams, args.inputs, 40_000, cycle=args.mix == "cycle")
    river = river_rate(mix, min(args.seconds, 3.0))
    env = {"TRACKIN_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else None
    with serve(env) as server, serve(floor=True) as floor, serve(floor=True, one_write=True) as joined:
        _create_streams(server.url, mix, args.inputs)
        rows = rest_rows(args, server, floor, joined, mix)
        rows += asyncio.run(ws_rows(args, server, joined, mix))
    for r in rows:
        r.river_ratio = r.rate / (r.river or river)
    load = os.getloadavg()[0]
    header = (
        f"trackin over loopback: {args.streams:,} linear streams x {args.inputs} inputs ({args.mix} mix), "
        f"{args.seconds:g} s each, {os.cpu_count()} CPUs, load {load:.1f}"
        + (f", server TRACKIN_TORCH_THREADS={args.torch_threads}" if args.torch_threads else "")
    )
    _print(rows, river, header)
    beside = [f"{r.name.rsplit(',', 1)[0]}: {r.river:,.0f}" for r in rows if r.river is not None]
    print(
        "River timed around each batched row (the mean of its rates just before and just after; the row's"
        " x River is to that): " + "; ".join(beside)
    )
    for line in _targets(rows, river, args.rate):
        print(line)
    if args.breakdown:
        from bench.http_stages import stage_costs

        costs = stage_costs(
            mix.names, _rows_body(mix, 0, 1000)["observations"], args.inputs, threads=args.torch_threads or 1
        )
        print("\nOne request of 1,000 observations, each stage alone in this process (us per observation):")
        for name, micros in costs:
            print(f"  {name:46s} {micros:7.2f}")
        print(f"  {'River LinearRegression predict_one + learn_one':46s} {1e6 / river:7.2f}")
        from bench.http_stages import columnar_costs

        part = slice(0, 1000)
        streams = [mix.names[s] for s in mix.ids[part].tolist()]
        columnar = columnar_costs(
            mix.names, streams, mix.x[part], mix.y[part], threads=args.torch_threads or 1
        )
        print("\nOne columnar request of 1,000 observations, each stage alone (us per observation):")
        for name, micros in columnar:
            print(f"  {name:46s} {micros:7.2f}")
        engine_us = next(m for n, m in columnar if n.startswith("engine"))
        rest = sum(m for n, m in columnar if "MessagePack" not in n)
        ws = sum(
            m for n, m in columnar if n.startswith(("decode the MessagePack", "look up", "build", "engine"))
        ) + next(m for n, m in columnar if n.startswith("answer columns as MessagePack"))
        print(
            f"  engine share: {engine_us / rest:.0%} of the REST JSON stages ({rest:.2f} us), "
            f"{engine_us / ws:.0%} of the WebSocket MessagePack stages ({ws:.2f} us); "
            f"the engine alone is {1e6 / river / engine_us:.2f}x River"
        )
    if args.json is not None:
        payload = {"river_obs_per_s": river, "rows": [asdict(r) | {"obs_per_s": r.rate} for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
