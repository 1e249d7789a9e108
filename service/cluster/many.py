"""``POST /v1/observations`` in cluster mode: one request naming streams of many partitions.

Checked as a whole before anything is logged, with single-node's rules and errors: the request's own rules
here (size, ids, namespace, every item names a stream), then every owner checks its part against its
streams (unknown streams, shapes, series times) with a read request; a refusal names the item by its index
in the request. Only then is each part published to its partition's log, all parts at once, and the
owners' answers are put back in request order. The columnar form (`columns`) goes the same way, its rows
split by partition and its answer's columns merged back.

Atomicity (docs/scale-out.md): each part is durable on its own publish acknowledgement, and the request
succeeds (200) when every part was applied. If a part could not be logged (NATS lost, the partition lost
its owner between the check and the publish) or its owner refused it (its stream changed between the check
and the apply), the answer is that part's error, with ``durable``: the indices of the items that were
logged and will be applied exactly once, and ``results`` (null where not known), so a client resends only
the others. A part logged but not answered within the forward timeout counts as durable (202 if no part
failed).

`submit_items` returns once every part is logged (or refused), with the answer still to come: the
WebSocket logs its next message meanwhile (pipelining), which keeps each partition's order.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import orjson

from trackin.service.cluster.front import Front
from trackin.service.cluster.messages import RETRY_AFTER, Answer
from trackin.service.cluster.partitions import partition_of
from trackin.service.errors import InvalidInput, PayloadTooLarge, ServiceError, error_headers
from trackin.service.security.namespace import Namespace
from trackin.service.transport.wire import ObservationIn, ObservationsBody, decode_json

__all__ = ["Pending", "body_items", "decode_observations", "finished", "observe_items", "submit_items"]

_QUALIFIED = Namespace("")
"""The parts' ids are internal already: the owner qualifies nothing."""
ROWS = re.compile(r"(observations)\[(\d+)\]")
"""Where a row-form error names an item (``observations[3].x``)."""

Pending = Answer | Awaitable[Answer]
"""An answer known now (a refusal), or one the owners will give."""
Outcome = Answer | BaseException


def decode_observations(raw: bytes) -> ObservationsBody | list[ObservationIn]:
    """A ``POST /v1/observations`` body: a list of items, or an object (rows or columns)."""
    if raw.lstrip()[:1] == b"[":
        items: list[ObservationIn] = decode_json(raw, list[ObservationIn], prefix="observations")
        return items
    body: ObservationsBody = decode_json(raw, ObservationsBody)
    return body


async def observe_items(front: Front, items: list[ObservationIn], namespace: Namespace, limit: int) -> Answer:
    """Check, split by partition, log, gather; the answer as the client sees it (internal ids)."""
    return await finished(await submit_items(front, items, namespace, limit))


async def finished(pending: Pending) -> Answer:
    return pending if isinstance(pending, Answer) else await pending


async def submit_items(
    front: Front,
    items: list[ObservationIn],
    namespace: Namespace,
    limit: int,
    after: Awaitable[Any] | None = None,
) -> Pending:
    """Check and log the items' parts; the answer (a refusal), or the owners' answers to come. ``after``:
    awaited between the check and the logging (the WebSocket's previous message logged)."""
    _check(items, namespace, limit)
    streams = [_stream(items, i) for i in range(len(items))]
    await front.admit(namespace, len(items))
    groups = await route(front, streams)
    bodies = {p: msgspec.json.encode([items[i] for i in indices]) for p, indices in groups.items()}
    checks = await check(front, groups, streams, "check", bodies)
    refused = refusal(checks, groups, ROWS)
    if refused is not None:
        return refused
    if after is not None:
        await after
    logged = await publish(front, groups, streams, "observe_many", bodies)
    return asyncio.create_task(_gathered(len(items), list(groups.values()), logged))


async def route(front: Front, streams: Sequence[str]) -> dict[int, list[int]]:
    """Request indices by partition; 503 at once for a partition without owner, nothing logged."""
    groups: dict[int, list[int]] = {}
    for i, stream in enumerate(streams):
        groups.setdefault(partition_of(stream, front.partitions), []).append(i)
    for indices in groups.values():
        await front.partition(streams[indices[0]])
    return groups


async def check(
    front: Front, groups: dict[int, list[int]], streams: Sequence[str], op: str, bodies: dict[int, bytes]
) -> dict[int, Answer]:
    """Every owner's check of its part, at once."""
    answers = await asyncio.gather(
        *(
            front.ask(p, op, streams[groups[p][0]], bodies[p], front.templates_for(streams, groups[p]))
            for p in groups
        )
    )
    return dict(zip(groups, answers, strict=True))


def refusal(checks: dict[int, Answer], groups: dict[int, list[int]], where: re.Pattern[str]) -> Answer | None:
    """The refusal naming the first refused item of the request, if any owner refused its part."""
    refusals = [in_request(a, groups[p], where) for p, a in checks.items() if a.status // 100 != 2]
    return min(refusals, key=lambda r: r[0])[1] if refusals else None


async def publish(
    front: Front, groups: dict[int, list[int]], streams: Sequence[str], op: str, bodies: dict[int, bytes]
) -> list[asyncio.Task[Answer] | BaseException]:
    """Log every part at once (with the templates its streams may be created from); per part, its answer
    to come or why it was not logged. The streams it may create from templates are reserved in their
    tenant's quota first (507, nothing logged, if they do not fit)."""
    await front.reserve(streams)
    return await asyncio.gather(
        *(
            front.logged(p, op, "", bodies[p], _QUALIFIED, headers=front.templates_for(streams, groups[p]))
            for p in groups
        ),
        return_exceptions=True,
    )


async def answers(logged: list[asyncio.Task[Answer] | BaseException]) -> list[Outcome]:
    return [o if isinstance(o, BaseException) else await o for o in logged]


def body_items(body: ObservationsBody) -> list[ObservationIn]:
    """The items of an object body in the row form (the columnar form is `columns`' business)."""
    if body.observations is None:
        raise InvalidInput("missing 'observations' (or the columnar 'streams')", field="observations")
    for name in ("x", "y", "value", "ts"):
        if getattr(body, name) is not None:
            raise InvalidInput(f"'{name}' belongs to the columnar form, with 'streams'", field=name)
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


def in_request(answer: Answer, indices: list[int], where: re.Pattern[str]) -> tuple[int, Answer]:
    """An owner's refusal of its part, naming the item by its index in the request; with that index."""
    body: dict[str, Any] = orjson.loads(answer.body) if answer.body else {}
    error = body.get("error") or {}
    first = indices[0]
    field = error.get("field")
    if isinstance(field, str) and (found := where.search(field)) and int(found[2]) < len(indices):
        first = indices[int(found[2])]

    def moved(match: re.Match[str]) -> str:
        k = int(match[2])
        return f"{match[1]}[{indices[k]}]" if k < len(indices) else match[0]

    for key in ("field", "message"):
        if isinstance(error.get(key), str):
            error[key] = where.sub(moved, error[key])
    return first, Answer(answer.status, orjson.dumps(body), answer.headers)


async def _gathered(
    n: int, groups: list[list[int]], logged: list[asyncio.Task[Answer] | BaseException]
) -> Answer:
    """The parts' answers in request order; the first failure (by item index) if any part failed."""
    outcomes = await answers(logged)
    results: list[Any] = [None] * n

    def place(indices: list[int], answer: Answer) -> bool:
        answered = orjson.loads(answer.body)["results"]
        if len(answered) != len(indices):
            return False
        for i, result in zip(indices, answered, strict=True):
            results[i] = result
        return True

    return merged(n, groups, outcomes, place, ROWS, lambda: orjson.dumps({"results": results}), results)


def merged(
    n: int,
    groups: list[list[int]],
    outcomes: list[Outcome],
    place: Callable[[list[int], Answer], bool],
    where: re.Pattern[str],
    body: Callable[[], bytes],
    results: Any,
) -> Answer:
    """The request's answer from its parts' outcomes: ``place`` puts a 200 part's answer in place (False: a
    replay after a failover, part of it in a checkpoint already: applied, not answered); ``body`` renders
    the whole answer once every part was; ``results`` goes with a failure (null where not known)."""
    durable: list[int] = []
    failures: list[tuple[int, Answer]] = []
    pending = False
    for indices, outcome in zip(groups, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, ServiceError):
                raise outcome
            error = Answer(outcome.status, orjson.dumps(outcome.body()), error_headers(outcome))
            failures.append((indices[0], error))
        elif outcome.status == 200:
            pending |= not place(indices, outcome)
            durable += indices
        elif outcome.status == 202:  # logged, its answer not known here yet
            durable += indices
            pending = True
        else:
            failures.append(in_request(outcome, indices, where))
    if not failures:
        if pending:
            logged = {"status": "logged", "results": results, "durable": list(range(n))}
            return Answer(202, orjson.dumps(logged, option=orjson.OPT_SERIALIZE_NUMPY))
        return Answer(200, body())
    first = min(failures, key=lambda f: f[0])[1]
    failed = {**orjson.loads(first.body), "durable": sorted(durable), "results": results}
    headers = dict(first.headers)
    if first.status == 503:
        headers.setdefault(RETRY_AFTER, "1")
    return Answer(first.status, orjson.dumps(failed, option=orjson.OPT_SERIALIZE_NUMPY), headers)
