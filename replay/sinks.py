"""Where ``trackin replay`` sends its messages: a running service (REST or WebSocket) or an engine in-process.

A sink sets up fresh streams (or a template, for feeds whose streams appear on the fly), then turns a
sequence of messages (lists of observations, each with ``"stream"``) into their results, in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trackin_client import Observation, Result, TrackinClient, TrackinError

__all__ = ["InProcessSink", "RestSink", "Sink", "StreamPlan", "WsSink"]


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


class RestSink:
    """One ``POST /v1/observations`` per message, each waiting for the previous (keeps per-stream order)."""

    label = "rest"

    def __init__(self, url: str) -> None:
        self.client = TrackinClient(url, timeout=300.0)

    def prepare(self, plan: StreamPlan) -> None:
        """Fresh state: the streams (or those under the template's prefix) are deleted, then created."""
        stale = list(self.client.list_streams(plan.prefix)) if plan.prefix is not None else []
        for stream in [*plan.streams, *stale]:
            with contextlib.suppress(TrackinError):  # not there (or removed meanwhile by the idle sweep)
                self.client.delete_stream(stream)
        for stream in plan.streams:
            self.client.create_stream(stream, plan.spec)
        if plan.template is not None and plan.prefix is not None:
            self.client.put_template(plan.template, plan.prefix, plan.spec, idle_seconds=plan.idle_seconds)

    def run(self, messages: Iterable[list[Observation]]) -> Iterator[list[Result]]:
        for message in messages:
            yield self.client.observe_many(message)

    def close(self) -> None:
        self.client.close()


class WsSink(RestSink):
    """Messages pipelined on one WebSocket (MessagePack), up to ``max_in_flight`` unanswered."""

    label = "ws"

    def __init__(self, url: str, max_in_flight: int = 8) -> None:
        super().__init__(url)
        self.max_in_flight = max_in_flight

    def run(self, messages: Iterable[list[Observation]]) -> Iterator[list[Result]]:
        with self.client.ws(max_in_flight=self.max_in_flight) as ws:
            yield from ws.stream(messages)


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
        from trackin.service.domain.registry import result_json

        assert self.plan is not None, "prepare() first"
        prefix = self.plan.prefix
        for message in messages:
            ids = [str(o["stream"]) for o in message]
            for stream in ids:
                if stream not in self.engine:
                    if prefix is None or not stream.startswith(prefix):
                        raise TrackinError("unknown_stream", f"unknown stream {stream!r}", stream=stream)
                    self.engine.add(stream, self.spec)
            inputs = [np.asarray(o["value"], dtype=np.float64) for o in message]
            results = self.engine.observe(ids, inputs, [None] * len(ids))
            yield [result_json(self.spec, r, s) for s, r in zip(ids, results, strict=True)]

    def close(self) -> None:
        pass
