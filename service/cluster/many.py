"""``POST /v1/observations`` in cluster mode: one request naming streams of many partitions.

Checked as a whole before anything is logged, with single-node's rules and errors: the request's own rules
here (size, ids, namespace, every item names a stream), then every owner checks its part against its
streams (unknown streams, shapes, series times) with a read request; a refusal names the item by its index
in the request. Only then is each part published to its partition's log, all parts at once, and the
owners' answers are put back in request order.

Atomicity (docs/scale-out.md): each part is durable on its own publish acknowledgement, and the request
succeeds (200) when every part was applied. If a part could not be logged (NATS lost, the partition lost
its owner between the check and the publish) or its owner refused it (its stream changed between the check
and the apply), the answer is that part's error, with ``durable``: the indices of the items that were
logged and will be applied exactly once, and ``results`` (null where not known), so a client resends only
the others. A part logged but not answered within the forward timeout counts as durable (202 if no part
failed).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import orjson

from trackin.service.cluster.front import Front
from trackin.service.cluster.messages import RETRY_AFTER, Answer
from trackin.service.cluster.partitions import partition_of
from trackin.service.errors import InvalidInput, PayloadTooLarge, ServiceError, error_headers
from trackin.service.security.namespace import Namespace
from trackin.service.transport.wire import ObservationIn, ObservationsBody, decode_json

__all__ = ["body_items", "observe_items", "observe_many"]

_QUALIFIED = Namespace("")
"""The parts' ids are internal already: the owner qualifies nothing."""
_INDEX = re.compile(r"observations\[(\d+)\]")


async def observe_many(front: Front, raw: bytes, namespace: Namespace, limit: int) -> Answer:
    """Check, split by partition, log, gather; the answer as the client sees it (internal ids)."""
    return await observe_items(front, _decode(raw), namespace, limit)


async def observe_items(front: Front, items: list[ObservationIn], namespace: Namespace, limit: int) -> Answer:
    """`observe_many` of decoded items (the WebSocket's messages too)."""
    _check(items, namespace, limit)
    await front.admit(namespace, len(items))
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        assert item.stream is not None
        groups.setdefault(partition_of(item.stream, front.partitions), []).append(i)
    firsts = {p: _stream(items, indices[0]) for p, indices in groups.items()}
    for stream in firsts.values():
        await front.partition(stream)  # 503 at once for a partition without owner, nothing logged
    bodies = {p: msgspec.json.encode([items[i] for i in indices]) for p, indices in groups.items()}
    checks = await asyncio.gather(*(front.ask(p, "check", firsts[p], bodies[p]) for p in groups))
    refusals = [_in_request(a, groups[p]) for p, a in zip(groups, checks, strict=True) if a.status != 204]
    if refusals:
        return min(refusals, key=lambda r: r[0])[1]
    logged = await asyncio.gather(
        *(front.log(p, "observe_many", "", bodies[p], _QUALIFIED) for p in groups), return_exceptions=True
    )
    return _gather(len(items), list(groups.values()), logged)


def _decode(raw: bytes) -> list[ObservationIn]:
    payload: ObservationsBody | list[ObservationIn] = (
        decode_json(raw, list[ObservationIn], prefix="observations")
        if raw.lstrip()[:1] == b"["
        else decode_json(raw, ObservationsBody)
    )
    return body_items(payload) if isinstance(payload, ObservationsBody) else payload


def body_items(body: ObservationsBody) -> list[ObservationIn]:
    """The items of an object body (the columnar form is refused, naming ``streams``)."""
    if body.streams is not None:
        raise InvalidInput(
            "the columnar form is not served in cluster mode yet: send 'observations'", field="streams"
        )
    if body.observations is None:
        raise InvalidInput("missing 'observations'", field="observations")
    return body.observations


def _check(items: list[ObservationIn], namespace: Namespace, limit: int) -> None:
    """Qualify the items; the checks single-node makes before looking at any stream."""
    if len(items) > limit:
        raise PayloadTooLarge(
            f"{len(items)} observations exceed the limit of {limit} per request", field="observations"
        )
    if not items:
        raise InvalidInput("no observations", field="observations")
    for i, item in enumerate(items):
        if item.stream is None:
            raise InvalidInput("each observation needs a 'stream'", field=f"observations[{i}].stream")
    namespace.items(items, "observations")


def _stream(items: Sequence[ObservationIn], index: int) -> str:
    stream = items[index].stream
    assert stream is not None
    return stream


def _in_request(answer: Answer, indices: list[int]) -> tuple[int, Answer]:
    """An owner's refusal of its part, naming the item by its index in the request; with that index."""
    body: dict[str, Any] = orjson.loads(answer.body) if answer.body else {}
    error = body.get("error") or {}
    first = indices[0]
    field = error.get("field")
    if isinstance(field, str) and (found := _INDEX.search(field)) and int(found[1]) < len(indices):
        first = indices[int(found[1])]

    def moved(match: re.Match[str]) -> str:
        k = int(match[1])
        return f"observations[{indices[k]}]" if k < len(indices) else match[0]

    for key in ("field", "message"):
        if isinstance(error.get(key), str):
            error[key] = _INDEX.sub(moved, error[key])
    return first, Answer(answer.status, orjson.dumps(body), answer.headers)


def _gather(n: int, groups: list[list[int]], logged: list[Answer | BaseException]) -> Answer:
    """The parts' answers in request order; the first failure (by item index) if any part failed."""
    results: list[Any] = [None] * n
    durable: list[int] = []
    failures: list[tuple[int, Answer]] = []
    pending = False
    for indices, outcome in zip(groups, logged, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, ServiceError):
                raise outcome
            error = Answer(outcome.status, orjson.dumps(outcome.body()), error_headers(outcome))
            failures.append((indices[0], error))
        elif outcome.status == 200:
            answered = orjson.loads(outcome.body)["results"]
            if len(answered) == len(indices):
                for i, result in zip(indices, answered, strict=True):
                    results[i] = result
            else:  # a replay after a failover, part of it in a checkpoint already: applied, not answered
                pending = True
            durable += indices
        elif outcome.status == 202:  # logged, its answer not known here yet
            durable += indices
            pending = True
        else:
            failures.append(_in_request(outcome, indices))
    if not failures:
        if pending:
            return Answer(
                202, orjson.dumps({"status": "logged", "results": results, "durable": list(range(n))})
            )
        return Answer(200, orjson.dumps({"results": results}))
    first = min(failures, key=lambda f: f[0])[1]
    body = {**orjson.loads(first.body), "durable": sorted(durable), "results": results}
    headers = dict(first.headers)
    if first.status == 503:
        headers.setdefault(RETRY_AFTER, "1")
    return Answer(first.status, orjson.dumps(body), headers)
