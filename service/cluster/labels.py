"""Late labels in cluster mode: a prediction's inputs kept in a JetStream key-value bucket, the label
logged with them.

``POST /predict`` with a ``request_id`` is answered by the stream's owner; the front that took it then
keeps the inputs in the ``labels`` bucket (TTL ``pending_label_ttl_seconds``, at most
``max_pending_label_bytes``), so any replica can take the label and the inputs outlive a failover.
``POST /labels`` reads them back and logs one write that carries both the inputs and the label: the owner
applies it as the observation ``(x, y)``, as single-node's label does, and a replay applies the same
step, whatever the bucket holds by then. The entry is removed once the label was logged and applied.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import nats.js.errors
import orjson
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from trackin.service.cluster.jetstream import NATS_ERRORS
from trackin.service.errors import OverBudget, Unavailable, UnknownRequest

__all__ = ["PendingInputs"]


def _stream_token(stream: str) -> str:
    return "s" + stream.encode().hex()


def _key(stream: str, request_id: str) -> str:
    """``s<stream hex>.r<hash of the request id>``: a stream's entries share a subject prefix."""
    return f"{_stream_token(stream)}.r{hashlib.sha256(request_id.encode()).hexdigest()[:40]}"


class PendingInputs:
    """The inputs of predictions waiting for their labels, shared by every replica."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str) -> None:
        self._kv = kv
        self._js = js
        self._bucket = bucket

    async def keep(self, stream: str, request_id: str, x: list[float]) -> None:
        value = orjson.dumps({"stream": stream, "request_id": request_id, "x": x})
        try:
            await self._kv.put(_key(stream, request_id), value)
        except nats.js.errors.BadRequestError as exc:  # the bucket is full (max_pending_label_bytes)
            raise OverBudget(
                f"too many predictions wait for their labels ({exc.description}); send labels or retry later",
                field="request_id",
                stream=stream,
            ) from None
        except NATS_ERRORS:
            raise Unavailable("labels unavailable, nothing kept", retry_after=1, stream=stream) from None

    async def inputs(self, stream: str, request_id: str) -> list[float]:
        """The kept inputs, or 404 as single-node answers (never made, or expired)."""
        try:
            entry = await self._kv.get(_key(stream, request_id))
        except nats.js.errors.NotFoundError:
            entry = None
        except NATS_ERRORS:
            raise Unavailable("labels unavailable, nothing applied", retry_after=1, stream=stream) from None
        body: dict[str, Any] = orjson.loads(entry.value) if entry is not None and entry.value else {}
        if body.get("stream") != stream or body.get("request_id") != request_id:
            raise UnknownRequest(
                f"no pending prediction {request_id!r} for stream {stream!r} (never made, or expired)",
                field="request_id",
                stream=stream,
            )
        x: list[float] = body["x"]
        return x

    async def drop_stream(self, stream: str) -> None:
        """A deleted stream's waiting predictions (as single-node drops them): a label for one of them must
        not step a stream made again under the same id."""
        subject = f"$KV.{self._bucket}.{_stream_token(stream)}.>"
        with contextlib.suppress(*NATS_ERRORS):
            await self._js.purge_stream(f"KV_{self._bucket}", subject=subject)

    async def done(self, stream: str, request_id: str) -> None:
        """The label was applied: forget the inputs (best effort; the TTL removes them otherwise)."""
        with contextlib.suppress(*NATS_ERRORS):
            await self._kv.delete(_key(stream, request_id))
