"""``trackin replay --url``: a running service over REST or WebSocket, through trackin-client.

The client is the ``replay`` extra's dependency, so this module is imported only when a URL is given. A
service with API keys takes the key from ``TRACKIN_API_KEY`` (scopes ``admin``, ``ingest`` and ``read``:
the replay creates, feeds and lists its streams).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from trackin.replay.sinks import StreamPlan
from trackin_client import Observation, Result, TrackinClient, TrackinError

__all__ = ["RestSink", "WsSink"]


class RestSink:
    """One ``POST /v1/observations`` per message, each waiting for the previous (keeps per-stream order)."""

    label = "rest"

    def __init__(self, url: str) -> None:
        self.client = TrackinClient(url, timeout=300.0, api_key=os.environ.get("TRACKIN_API_KEY") or None)

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
