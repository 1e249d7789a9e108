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
