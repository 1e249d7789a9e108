"""Any replica accepts any request: writes are logged for the owner, reads are asked of it.

A write is published to its partition's subject; JetStream's acknowledgement is the durability point.
The front then waits for the owner's answer (the same status and body as single-node), up to
``cluster_forward_timeout_seconds``; past that it answers 202 with the log sequence: the write is durable
and will be applied exactly once, only its answer is not known here. A partition without an owner gets a
503 with Retry-After before anything is logged, so the client may safely resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from trackin.service.cluster.jetstream import NATS_ERRORS, Link
from trackin.service.cluster.leases import PartitionMap
from trackin.service.cluster.messages import (
    EXPIRES,
    MSG_ID,
    NAMESPACE,
    OP,
    ORIGIN,
    REPLACE,
    STREAM,
    Answer,
    Replies,
)
from trackin.service.cluster.partitions import Names, partition_of
from trackin.service.cluster.quotas import SharedQuotas
from trackin.service.cluster.templates import TemplateBook
from trackin.service.errors import Unavailable
from trackin.service.security.keys import DEFAULT_TENANT
from trackin.service.security.limiter import Limiter
from trackin.service.security.namespace import Namespace

__all__ = ["Front"]

_READ_TIMEOUT = 2.0
PUBLISH_SECONDS = 2.0
"""A write stored later than this after the front sent it is not applied (`EXPIRES`)."""
_CLOCK_MARGIN = 0.5
"""An acknowledgement this long before the expiry proves the write was stored in time, whatever the
clock skew between this host and NATS's (bounded by this margin); a later one is checked exactly."""


class Front:
    """Forwards requests for any stream to its partition's owner, through NATS."""

    def __init__(
        self,
        link: Link,
        names: Names,
        replica: str,
        partitions: int,
        partition_map: PartitionMap,
        replies: Replies,
        forward_timeout: float,
        templates: TemplateBook,
        limiter: Limiter | None = None,
        quotas: SharedQuotas | None = None,
    ) -> None:
        self._link = link
        self._names = names
        self._replica = replica
        self._partitions = partitions
        self._map = partition_map
        self._replies = replies
        self._timeout = forward_timeout
        self._limiter = limiter
        self._templates = templates
        self._quotas = quotas
        self._sub: Subscription | None = None

    @property
    def partitions(self) -> int:
        return self._partitions

    async def start(self) -> None:
        self._sub = await self._link.nc.subscribe(self._names.reply_subject(self._replica), cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        headers = msg.headers or {}
        self._replies.deliver(headers.get(MSG_ID, ""), Answer.from_nats(headers, msg.data))

    @property
    def limits_observations(self) -> bool:
        """Whether `admit` counts anything (else a caller need not count a body's observations)."""
        return self._limiter is not None and self._limiter.active

    async def admit(self, namespace: Namespace, count: int) -> None:
        """The tenant's observation rate (``TRACKIN_TENANT_OBSERVATIONS_RATE``), counted in the cluster's
        Redis: 429 with Retry-After before anything is logged, as single-node."""
        if self._limiter is not None:
            tenant = namespace.prefix[1:-1] if namespace.prefix else DEFAULT_TENANT
            await self._limiter.admit_observations(tenant, count)

    async def partition(self, stream_id: str) -> int:
        """The partition of a stream's internal id (checked and qualified by the caller, so every replica
        hashes a tenant's stream alike); 503 if it has no owner (the map is a tick old, so an empty slot
        is looked up before refusing)."""
        partition = partition_of(stream_id, self._partitions)
        if self._map.owners[partition] is None:
            try:
                entry = await self._link.leases.get(Names.lease_key(partition))
                self._map.owners[partition] = (entry.value or b"").decode() or None
            except NATS_ERRORS:  # not found (no lease), or NATS unreachable
                pass
        if self._map.owners[partition] is None:
            raise Unavailable(
                f"partition {partition} of stream {stream_id!r} has no owner right now, nothing applied",
                retry_after=1,
                stream=stream_id,
            )
        return partition

    def templates_for(self, streams: Sequence[str], indices: Sequence[int] | None = None) -> dict[str, str]:
        """The header carrying the templates the streams (those at ``indices``) may be created from."""
        named = streams if indices is None else [streams[i] for i in indices]
        return self._templates.header(named)

    async def reserve(self, streams: Sequence[str]) -> None:
        """Tenant quotas (``TRACKIN_TENANT_MAX_STREAMS`` / ``_MAX_BYTES``) for the streams a write names
        that a template matches, before it is logged: 507 if the new ones do not fit, as single-node (the
        owner cannot refuse on the shared count: its replay would depend on it). Existing ones are free."""
        if self._quotas is None:
            return
        matched = self._templates.matching(streams)
        if matched:
            await self._quotas.reserve({s: t.spec for s, t in matched.items()})

    async def write(
        self, op: str, stream_id: str, body: bytes, namespace: Namespace, *, replace: bool = False
    ) -> Answer:
        """Log a write (``observe``, ``label``, ``put``, ``delete``) of an internal id and return the
        owner's answer; ``namespace`` travels with it so the owner qualifies the ids an observation body
        names; an observation carries the template its stream may be created from."""
        partition = await self.partition(stream_id)
        headers = self.templates_for([stream_id]) if op == "observe" else None
        if headers:
            await self.reserve([stream_id])
        return await self.log(partition, op, stream_id, body, namespace, replace=replace, headers=headers)

    async def log(
        self,
        partition: int,
        op: str,
        stream_id: str,
        body: bytes,
        namespace: Namespace,
        *,
        replace: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """`write` to a known partition (``stream_id``: "" for a multi-stream part)."""
        answer = await self.logged(
            partition, op, stream_id, body, namespace, replace=replace, headers=headers
        )
        return await answer

    async def logged(
        self,
        partition: int,
        op: str,
        stream_id: str,
        body: bytes,
        namespace: Namespace,
        *,
        replace: bool = False,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Task[Answer]:
        """`log`, returning once the write is durable (or raising ``Unavailable`` if it is not): the
        owner's answer comes in the task, so a caller may log its next write meanwhile (the WebSocket's
        pipelining keeps each partition's order, as its writes are logged one after another)."""
        msg_id = uuid.uuid4().hex
        sent = {**(headers or {}), OP: op, STREAM: stream_id, ORIGIN: self._replica, MSG_ID: msg_id}
        if namespace.prefix:
            sent[NAMESPACE] = namespace.prefix
        if replace:
            sent[REPLACE] = "1"
        if not self._link.nc.is_connected:  # fail fast, nothing sent
            raise Unavailable(
                "log unavailable (NATS disconnected), nothing applied", stream=stream_id or None
            )
        expires = time.time() + PUBLISH_SECONDS
        sent[EXPIRES] = f"{expires:.3f}"
        answer = self._replies.expect(msg_id)
        try:
            seq = await self._log(partition, body, sent, expires)
        except BaseException:
            self._replies.forget(msg_id)
            raise
        if seq is None:
            self._replies.forget(msg_id)
            raise Unavailable("log unavailable, nothing applied", stream=stream_id or None)
        return asyncio.create_task(self._answer(answer, msg_id, partition, seq, stream_id))

    async def _answer(
        self, answer: asyncio.Future[Answer], msg_id: str, partition: int, seq: int, stream_id: str
    ) -> Answer:
        """The owner's answer, or 202 with the log sequence past the forward timeout."""
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self._timeout)
        except TimeoutError:
            self._replies.forget(msg_id)
            logged = {"status": "logged", "partition": partition, "seq": seq, "stream": stream_id or None}
            return Answer(202, orjson.dumps(logged))

    async def _log(self, partition: int, body: bytes, headers: dict[str, str], expires: float) -> int | None:
        """Publish until acknowledged; the log sequence if the owner will apply the write, None if not.

        A publish whose acknowledgement does not come may still have been stored, so it is sent again
        with the same message id (JetStream answers a duplicate with the original's sequence) until the
        log answers or the forward timeout passes. The owner applies the write only if JetStream stored
        it by ``expires``: an acknowledgement received well before that says so; a later one is checked
        against the stored message's time, the same time the owner compares.
        """
        js, subject = self._link.js, self._names.log_subject(partition)
        deadline = time.monotonic() + self._timeout
        first = True
        while True:
            try:
                ack = await js.publish(subject, body, headers=headers, timeout=PUBLISH_SECONDS)
                break
            except nats.js.errors.BadRequestError:
                if first:  # refused (too big, the stream's limits): not stored, nothing to apply
                    return None
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(0.1)
            except NATS_ERRORS:
                if time.monotonic() > deadline:
                    # Not known whether the first attempt was stored before NATS went away: the one
                    # case where a 503 may still be applied (docs/scale-out.md, failure cases).
                    return None
            first = False
            while not self._link.nc.is_connected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if time.time() < expires - _CLOCK_MARGIN:
            return ack.seq
        try:
            stored = await js.get_msg(self._names.log_stream, seq=ack.seq)
        except NATS_ERRORS:
            return None
        if stored.time is None or stored.time.timestamp() > expires:
            return None
        return ack.seq

    async def read(self, op: str, stream_id: str, body: bytes = b"") -> Answer:
        """Ask the owner (``describe``, ``predict``); 503 while the partition moves."""
        return await self.ask(await self.partition(stream_id), op, stream_id, body)

    async def ask(
        self,
        partition: int,
        op: str,
        stream_id: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """`read` of a known partition (``check``: a multi-stream part, ``stream_id`` its first stream)."""
        try:
            msg = await self._link.nc.request(
                self._names.read_subject(partition),
                body,
                timeout=_READ_TIMEOUT,
                headers={**(headers or {}), OP: op, STREAM: stream_id},
            )
        except NATS_ERRORS:  # no responders (nobody owns it right now), timeout, NATS down
            raise Unavailable(
                f"partition {partition} of stream {stream_id!r} is moving to another replica",
                retry_after=1,
                stream=stream_id,
            ) from None
        return Answer.from_nats(msg.headers, msg.data)
