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
