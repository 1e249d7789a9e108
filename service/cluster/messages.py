"""What travels between replicas: the headers of a logged write or a read, and the answers.

A write is logged as the HTTP request came (the body as the payload) with its operation, stream, message
id (``Nats-Msg-Id``: JetStream drops a duplicate publish within two minutes) and where to answer; the
owner answers with the HTTP status and body the single-node service would have given.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

__all__ = [
    "DEAD_ERROR",
    "DEAD_SEQ",
    "EXPIRES",
    "MSG_ID",
    "NAMESPACE",
    "OP",
    "ORIGIN",
    "OWNER",
    "REPLACE",
    "STATUS",
    "STREAM",
    "TOKEN",
    "Answer",
    "Replies",
]

OP = "Trackin-Op"
"""``observe``, ``put``, ``delete`` (writes, logged); ``describe``, ``predict`` (reads)."""
STREAM = "Trackin-Stream"
REPLACE = "Trackin-Replace"
NAMESPACE = "Trackin-Namespace"
"""The caller's namespace prefix (``~tenant/``; absent for the default tenant): the owner qualifies the
``stream`` an observation body names with it, as the single-node route does."""
ORIGIN = "Trackin-Origin"
"""The replica that logged the write and waits for its answer."""
MSG_ID = "Nats-Msg-Id"
EXPIRES = "Trackin-Expires"
"""Unix time after which the write must not be applied: a publish whose acknowledgement the front gave up
on (503) may still reach the log later (the client library resends what it buffered while reconnecting);
the owner compares this with the time JetStream stored the message, the same for every replay."""
STATUS = "Trackin-Status"
OWNER = "Trackin-Owner"
"""On answers: the replica that applied the write, and its fencing token for the partition (``TOKEN``)."""
TOKEN = "Trackin-Token"
SEQ = "Trackin-Seq"
"""On answers: the log sequence of the write answered."""
RETRY_AFTER = "Retry-After"
DEAD_SEQ = "Trackin-Dead-Seq"
"""On a dead letter: the log sequence of the write that could not be applied, and why (``DEAD_ERROR``)."""
DEAD_ERROR = "Trackin-Dead-Error"


@dataclass(frozen=True, slots=True)
class Answer:
    """An owner's answer: HTTP status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def nats_headers(self, msg_id: str) -> dict[str, str]:
        return {STATUS: str(self.status), MSG_ID: msg_id, **self.headers}

    @classmethod
    def from_nats(cls, headers: dict[str, str] | None, body: bytes) -> Answer:
        headers = headers or {}
        extra = {RETRY_AFTER: headers[RETRY_AFTER]} if RETRY_AFTER in headers else {}
        return cls(int(headers.get(STATUS, "500")), body, extra)


class Replies:
    """Writes this replica logged and waits for, by message id; answered from NATS or, for partitions
    this replica owns, directly by the owner."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Answer]] = {}

    def expect(self, msg_id: str) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        return future

    def forget(self, msg_id: str) -> None:
        self._waiting.pop(msg_id, None)

    def deliver(self, msg_id: str, answer: Answer) -> bool:
        """True if someone here was waiting (else the answer is for another replica, or too late)."""
        future = self._waiting.pop(msg_id, None)
        if future is None:
            return False
        with contextlib.suppress(asyncio.InvalidStateError):
            future.set_result(answer)
        return True
