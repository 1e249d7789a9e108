"""Where a batched observation's time goes: each stage of the REST hot path timed alone, in this process.

The stages are the functions the service and the client run for a ``POST /v1/observations`` of 1,000
observations (HTTP parsing and the thread hand-off, a few microseconds per request, are left out): the
figures are microseconds per observation, the best of ``repeats``, so they add up to a lower bound of
what one core spends per observation end to end. Used by ``python -m bench.http --breakdown``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import torch

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import build_batch
from trackin.service.transport.results import result_json
from trackin.service.transport.wire import ObservationsBody, decode_json, encode_json

__all__ = ["stage_costs"]


def stage_costs(
    names: list[str], observations: list[Any], inputs: int, *, threads: int = 1, repeats: int = 30
) -> list[tuple[str, float]]:
    """``(stage, microseconds per observation)`` for one request of ``observations`` (1,000 or so), the
    engine on ``threads`` torch intra-op threads (the service's ``torch_threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _costs(names, observations, inputs, repeats)
    finally:
        torch.set_num_threads(before)


def _costs(names: list[str], observations: list[Any], inputs: int, repeats: int) -> list[tuple[str, float]]:
    engine = Engine("cpu")
    spec = {"model": {"family": "linear", "in_dim": inputs}}
    shared = {n: engine.add(n, StreamSpec.model_validate(spec)).spec for n in names}
    separate = {n: StreamSpec.model_validate(spec) for n in names}
    body = msgspec.json.encode({"observations": observations})
    decoded: ObservationsBody = decode_json(body, ObservationsBody)
    items = decoded.observations or []
    batch = build_batch(items, shared)
    results = engine.observe(batch.stream_ids, batch.inputs, batch.targets)

    def answers() -> list[dict[str, Any]]:
        return [result_json(batch.specs[s], r, s) for s, r in zip(batch.stream_ids, results, strict=True)]

    answer = {"results": answers()}
    encoded = encode_json(answer)
    stages: dict[str, Callable[[], object]] = {
        "client: encode the request (JSON)": lambda: msgspec.json.encode({"observations": observations}),
        "server: decode into ObservationIn structs": lambda: decode_json(body, ObservationsBody),
        "server: look up the streams' specs": lambda: {o.stream: shared[str(o.stream)] for o in items},
        "server: build_batch (check, float64 rows)": lambda: build_batch(items, shared),
        "server: specs still current, equal objects": lambda: [separate[s] != shared[s] for s in batch.specs],
        "server: specs still current, shared objects": lambda: [shared[s] != shared[s] for s in batch.specs],
        f"engine: observe ({torch.get_num_threads()} torch threads)": lambda: engine.observe(
            batch.stream_ids, batch.inputs, batch.targets
        ),
        "server: result_json per observation": answers,
        "server: encode the answer (JSON)": lambda: encode_json(answer),
        "client: decode the answer": lambda: msgspec.json.decode(encoded),
    }
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(repeats):
        for name, run in stages.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return [(name, seconds / len(observations) * 1e6) for name, seconds in best.items()]


def columnar_costs(
    names: list[str], streams: list[str], x: Any, y: Any, *, threads: int = 1, repeats: int = 30
) -> list[tuple[str, float]]:
    """``(stage, microseconds per observation)`` for one columnar request of ``len(streams)`` observations
    (``{"streams", "x", "y"}``: REST JSON, and the WebSocket's MessagePack frame with raw float buffers),
    each stage the service runs timed alone in this process, best of ``repeats``; the engine stage is the
    scheduler's call (``Engine.observe_arrays``), so ``engine / total`` is the engine's share of the
    request's CPU outside HTTP parsing and the socket."""
    import numpy as np

    from trackin.service.domain.catalog import Catalog, StreamRecord
    from trackin.service.domain.columns import build_columns
    from trackin.service.domain.scheduler import _observe_all
    from trackin.service.transport.columnar import columns_of
    from trackin.service.transport.results import columns_json, columns_msgpack
    from trackin.service.transport.wire import decode_msgpack

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = Engine("cpu")
        spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": np.shape(x)[1]}})
        catalog = Catalog()
        for n in names:
            catalog.add(n, StreamRecord(engine.add(n, spec).spec, 0.0, 0.0))
        json_body = msgspec.json.encode(
            {"streams": streams, "x": np.asarray(x).tolist(), "y": np.asarray(y).tolist()}
        )
        packed = msgspec.msgpack.encode(
            {
                "streams": streams,
                "x": np.ascontiguousarray(x, "<f8").tobytes(),
                "y": np.ascontiguousarray(y, "<f8").tobytes(),
            }
        )
        decoded: ObservationsBody = decode_json(json_body, ObservationsBody)
        columns = columns_of(decoded)
        assert columns is not None

        def specs() -> dict[str, StreamSpec]:  # Registry.enqueue_columns' lookup of catalogued streams
            out: dict[str, StreamSpec] = {}
            for s in columns.streams:
                if s not in out:
                    record = catalog.record(s)
                    assert record is not None
                    out[s] = record.spec
            return out

        found = specs()
        batch = build_columns(columns, found)
        outcomes = _observe_all(engine, [batch])[0]
        stages: dict[str, Callable[[], object]] = {
            "decode the JSON body (msgspec)": lambda: decode_json(json_body, ObservationsBody),
            "JSON columns into arrays (np.array)": lambda: columns_of(decoded),
            "decode the MessagePack frame into arrays": lambda: columns_of(
                decode_msgpack(packed, ObservationsBody)
            ),
            "look up the streams' specs (catalog)": specs,
            "build_columns (shapes, finite, bce)": lambda: build_columns(columns, found),
            f"engine: observe_arrays ({torch.get_num_threads()} torch threads)": lambda: _observe_all(
                engine, [batch]
            ),
            "answer columns as JSON (orjson, numpy)": lambda: columns_json(outcomes, 1, False),
            "answer columns as MessagePack (buffers)": lambda: columns_msgpack(outcomes, 1, False, 1),
        }
        best = dict.fromkeys(stages, float("inf"))
        for _ in range(repeats):
            for name, run in stages.items():
                started = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
        return [(name, seconds / len(streams) * 1e6) for name, seconds in best.items()]
    finally:
        torch.set_num_threads(before)


def single_costs(inputs: int = 16, streams: int = 1000, repeats: int = 2000) -> list[tuple[str, float]]:
    """``(stage, microseconds)`` for one single-observation request (``POST /v1/streams/{id}/observations``
    with one 16-float observation), each stage the service runs timed alone in this process (median of
    ``repeats``). HTTP parsing, routing and the socket write are not here: see docs/engine.md for the
    profile of the served request."""
    import statistics

    import numpy as np

    from trackin.service.domain.scheduler import _observe_all
    from trackin.service.transport.results import results_json
    from trackin.service.transport.wire import ObservationIn

    torch.set_num_threads(1)
    engine = Engine("cpu")
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": inputs}})
    names = [f"s{i}" for i in range(streams)]
    shared = {n: engine.add(n, spec).spec for n in names}
    rng = np.random.default_rng(0)
    body = msgspec.json.encode({"x": rng.normal(size=inputs).tolist(), "y": 0.5})
    item: ObservationIn = decode_json(body, ObservationIn, prefix="observations[0]")
    batch = build_batch([item], {"s1": shared["s1"]}, default_stream="s1")
    outcomes = _observe_all(engine, [batch])[0]
    answer = {"results": results_json(batch.stream_ids, batch.specs, outcomes, many=False)}
    stages: dict[str, Callable[[], object]] = {
        "decode the body (msgspec, ObservationIn)": lambda: decode_json(body, ObservationIn, prefix="o"),
        "build_batch (check, one float64 row)": lambda: build_batch(
            [item], {"s1": shared["s1"]}, default_stream="s1"
        ),
        "engine: observe_arrays, batch of 1": lambda: _observe_all(engine, [batch]),
        "answer rows from the outcome columns": lambda: results_json(
            batch.stream_ids, batch.specs, outcomes, many=False
        ),
        "encode the answer (JSON)": lambda: encode_json(answer),
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeats):
        for name, run in stages.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return [(name, statistics.median(values) * 1e6) for name, values in times.items()]


if __name__ == "__main__":
    for stage, micros in single_costs():
        print(f"  {stage:46s} {micros:8.1f} us")
