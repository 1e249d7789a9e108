"""Where ``trackin replay`` sends its messages: an engine in-process here, a running service in ``remote``.

A sink sets up fresh streams (or a template, for feeds whose streams appear on the fly), then turns a
sequence of messages (lists of observations, each with ``"stream"``) into their results, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["InProcessSink", "Observation", "Result", "Sink", "StreamPlan"]

Observation = Mapping[str, Any]
"""An observation as on the wire (``trackin_client.Observation``)."""
Result = dict[str, Any]
"""One observation's answer as on the wire (``trackin_client.Result``)."""


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Streams to create now (``streams``), or a template for streams created on first sight."""

    spec: Mapping[str, Any]
    streams: tuple[str, ...] = ()
    template: str | None = None
    prefix: str | None = None
    idle_seconds: float = 600.0


class Sink(Protocol):
    label: str

    def prepare(self, plan: StreamPlan) -> None: ...
    def run(self, messages: Iterable[list[Observation]]) -> Iterator[list[Result]]: ...
    def close(self) -> None: ...


class InProcessSink:
    """No server: an :class:`models.engine.Engine` in this process, stepped once per observation."""

    label = "in-process"

    def __init__(self, device: str = "cpu") -> None:
        from trackin.models.engine import Engine, resolve_device

        self.engine = Engine(resolve_device(device))
        self.plan: StreamPlan | None = None

    def prepare(self, plan: StreamPlan) -> None:
        from trackin.models.specs import StreamSpec

        self.plan = plan
        self.spec = StreamSpec.model_validate(plan.spec)
        for stream in plan.streams:
            self.engine.add(stream, self.spec)

    def run(self, messages: Iterable[list[Observation]]) -> Iterator[list[Result]]:
        from trackin.service.transport.results import result_json

        assert self.plan is not None, "prepare() first"
        prefix = self.plan.prefix
        for message in messages:
            ids = [str(o["stream"]) for o in message]
            for stream in ids:
                if stream not in self.engine:
                    if prefix is None or not stream.startswith(prefix):
                        raise KeyError(f"unknown stream {stream!r} (no template prefix matches it)")
                    self.engine.add(stream, self.spec)
            inputs = [np.asarray(o["value"], dtype=np.float64) for o in message]
            results = self.engine.observe(ids, inputs, [None] * len(ids), [o.get("ts") for o in message])
            yield [result_json(self.spec, r, s) for s, r in zip(ids, results, strict=True)]

    def close(self) -> None:
        pass
