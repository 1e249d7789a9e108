"""The idle sweep of template-made streams in cluster mode: the owner logs its decision (each idle stream
with the log position it saw) and applying that message deletes a stream only if nothing was applied to it
since; a successor replaying the partition after a SIGKILL reaches the same streams."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import httpx
import nats
import orjson
import pytest

from tests.cluster import SPEC, Cluster, partition
from tests.cluster.test_operations import counter
from trackin.service.store.redis_backend import RedisStore

pytestmark = pytest.mark.slow

SUBJECT = "trackin.log.{}"


def _named(prefix: str, target: int) -> Iterator[str]:
    """Stream ids under ``prefix`` that fall in partition ``target``."""
    i = 0
    while True:
        if partition(name := f"{prefix}{i}") == target:
            yield name
        i += 1


async def _last_seq(nats_url: str, p: int) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().get_last_msg("trackin-log", SUBJECT.format(p))).seq or 0)
    finally:
        await nc.close()


async def _publish_sweep(nats_url: str, p: int, streams: dict[str, int]) -> None:
    """A sweep message as an owner logs it (service/cluster/sweep.py)."""
    nc = await nats.connect(nats_url)
    try:
        headers = {"Trackin-Op": "sweep", "Nats-Msg-Id": f"test-sweep-{uuid.uuid4().hex}"}
        await nc.jetstream().publish(SUBJECT.format(p), orjson.dumps({"streams": streams}), headers=headers)
    finally:
        await nc.close()


async def _stored(redis_url: str, prefix: str) -> set[str]:
    store = RedisStore(redis_url)
    await store.startup()
    try:
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await store.list_streams(prefix, 1000, cursor)
            ids += page
            if cursor is None:
                return set(ids)
    finally:
        await store.shutdown()


def _read(http: httpx.Client, url: str) -> httpx.Response:
    """A GET, retried as a client does while its partition moves (503 with Retry-After)."""
    deadline = time.monotonic() + 15
    while (got := http.get(url)).status_code == 503 and time.monotonic() < deadline:
        assert int(got.headers["Retry-After"]) >= 1
        time.sleep(0.2)
    assert got.status_code in (200, 404), got.text
    return got


def _answers(http: httpx.Client, urls: list[str], streams: list[str]) -> dict[str, set[int | None]]:
    """Each stream's steps as every replica answers them (None: unknown), one read after another."""
    seen: dict[str, set[int | None]] = {}
    for stream in streams:
        seen[stream] = set()
        for url in urls:
            got = _read(http, f"{url}/v1/streams/{stream}")
            seen[stream].add(got.json()["figures"]["steps"] if got.status_code == 200 else None)
    return seen


def _state(http: httpx.Client, urls: list[str], streams: list[str]) -> dict[str, int | None]:
    """Each stream's steps through every replica, at rest: every replica must agree."""
    seen = _answers(http, urls, streams)
    for stream, answers in seen.items():
        assert len(answers) == 1, (stream, answers)
    return {stream: answers.pop() for stream, answers in seen.items()}


def _settled(http: httpx.Client, urls: list[str], streams: list[str], want: dict[str, int | None]) -> None:
    """Wait until every replica answers ``want``. The reads go one after another while the owner's sweep
    runs, so until it is done two replicas may tell a stream's state before and after it."""
    deadline = time.monotonic() + 20
    while (seen := _answers(http, urls, streams)) != {stream: {steps} for stream, steps in want.items()}:
        assert time.monotonic() < deadline, seen
        time.sleep(0.25)


async def test_idle_streams_are_swept_through_the_log_and_a_successor_agrees(cluster: Cluster) -> None:
    p = 5
    idle = list(itertools.islice(_named("swa-", p), 4))
    kept, dropped = itertools.islice(_named("swk-", p), 2)
    plain = next(_named("swp-", p))  # never observed: the successor replays the partition from before it all
    streams = [plain, *idle, kept, dropped]
    urls = [r.url for r in cluster.live()]
    obs = {"x": [0.5, -0.25, 1.0], "y": 0.75}
    try:
        with httpx.Client(timeout=30, headers=cluster.headers) as http:
            assert http.put(f"{urls[0]}/v1/streams/{plain}", json=SPEC).status_code == 201
            for name, prefix, seconds in (("swa", "swa-", 2.0), ("swk", "swk-", 600.0)):
                made = http.put(
                    f"{urls[-1]}/v1/templates/{name}",
                    json={"prefix": prefix, "spec": SPEC, "idle_seconds": seconds},
                )
                assert made.status_code == 201, made.text
            for url in urls:  # every mirror holds both templates before the first observation
                assert len(http.get(f"{url}/v1/templates").json()["templates"]) == 2
            # ``kept`` and ``dropped`` are swept by a message naming the positions a decision saw; ``kept`` is
            # observed after that decision, so the message must leave it. (Before the "swa-" streams exist: no
            # sweep of theirs comes between an observation and the reading of its sequence.)
            assert http.post(f"{urls[0]}/v1/streams/{kept}/observations", json=obs).status_code == 200
            seen_kept = await _last_seq(cluster.nats.url, p)
            assert http.post(f"{urls[-1]}/v1/streams/{dropped}/observations", json=obs).status_code == 200
            seen_dropped = await _last_seq(cluster.nats.url, p)
            assert http.post(f"{urls[-1]}/v1/streams/{kept}/observations", json=obs).status_code == 200
            await _publish_sweep(cluster.nats.url, p, {kept: seen_kept, dropped: seen_dropped})
            for i, stream in enumerate(idle * 2):
                answer = http.post(f"{urls[i % len(urls)]}/v1/streams/{stream}/observations", json=obs)
                assert answer.status_code == 200, answer.text
            waiting = {"x": obs["x"], "request_id": "sw-r1"}  # a prediction waiting for its label when swept
            assert http.post(f"{urls[-1]}/v1/streams/{idle[0]}/predict", json=waiting).status_code == 200

            # The owner's own sweep: the "swa-" streams idle for 2 s are gone within a few seconds.
            want = {plain: 0, **dict.fromkeys(idle), kept: 2, dropped: None}
            _settled(http, urls, streams, want)
            assert await _stored(cluster.redis.url, "sw") == {plain, kept}
            assert counter(cluster, "trackin_cluster_streams_swept_total") >= 5

            # The owner killed: its successor restores, replays the partition from ``plain``'s checkpoint (the
            # creations, the observations, both sweeps) and ends with the same streams, none made again.
            victim = next(r for r in cluster.live() if p in cluster.owned_by(r))
            victim.kill()
            cluster.wait_ready(timeout=60)
            survivors = [r.url for r in cluster.live()]
            assert _state(http, survivors, streams) == want
            assert await _stored(cluster.redis.url, "sw") == {plain, kept}
            # The swept stream's waiting prediction went with it: its label steps no stream made again.
            assert http.post(f"{survivors[0]}/v1/streams/{idle[0]}/observations", json=obs).status_code == 200
            late = http.post(
                f"{survivors[-1]}/v1/streams/{idle[0]}/labels", json={"request_id": "sw-r1", "y": 1.0}
            )
            assert late.status_code == 404, late.text
            assert late.json()["error"]["field"] == "request_id"
            for stream in (plain, kept, idle[0]):
                assert http.delete(f"{survivors[0]}/v1/streams/{stream}").status_code == 204
            for name in ("swa", "swk"):
                assert http.delete(f"{survivors[0]}/v1/templates/{name}").status_code == 204
    finally:  # a failure here must not leave the templates to the next tests
        with httpx.Client(timeout=30, headers=cluster.headers) as http:
            for name in ("swa", "swk"):
                http.delete(f"{cluster.live()[0].url}/v1/templates/{name}")
    cluster.add()  # as many replicas as found, for the next tests
    cluster.wait_ready(timeout=60)
