"""service/durability/residency.py in-process: least recently used streams beyond the limit are written out
and dropped, held streams never are, and an evicted stream comes back exactly as it was."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import Parts, assert_same_state, rows, until_up
from trackin.service.errors import Unavailable
from trackin.service.store import RedisStore
from trackin.service.transport.wire import ObservationIn

pytestmark = pytest.mark.timeout(60)


async def _streams(parts: Parts, *ids: str) -> None:
    """Create and observe ``ids`` in order (the last one is the most recently used)."""
    for i, stream_id in enumerate(ids):
        await parts.create(stream_id)
        await parts.observe(stream_id, rows(i + 1))


async def test_least_recently_used_streams_beyond_the_limit_are_stored_and_dropped(backend: Backend) -> None:
    async with Parts.on(backend.open(), max_resident_streams=2) as parts:
        await _streams(parts, "s0", "s1", "s2", "s3")
        await parts.observe("s0", rows(1, start=9))  # s1 is now the least recently used
        await parts.residency.evict()
        assert sorted(s for s in ("s0", "s1", "s2", "s3") if s in parts.engine) == ["s0", "s3"]
        assert sorted(s for s in ("s0", "s1", "s2", "s3") if s in parts.catalog) == ["s0", "s3"]
        assert parts.ledger.recent() == ["s3", "s0"]
        assert parts.sample("trackin_evictions_total") == 2
        for stream_id, count in (("s1", 2), ("s2", 3)):
            stored = await parts.store.read_checkpoint(stream_id)
            assert stored is not None, stream_id
            assert stored.step == count, stream_id
        await parts.residency.evict()
        assert parts.sample("trackin_evictions_total") == 2, "within the limit: nothing more to do"


async def test_an_evicted_stream_comes_back_to_the_bit_and_goes_on(backend: Backend) -> None:
    async with Parts.on(backend.open(), max_resident_streams=1) as parts:
        await _streams(parts, "a", "b")
        before = await parts.state("a")
        await parts.residency.evict()
        assert "a" not in parts.engine
        assert "a" not in parts.catalog
        record = await parts.restorer.restore("a")
        assert record is not None
        assert record is parts.catalog.record("a")
        assert_same_state(await parts.state("a"), before)
        assert parts.ledger.count("a") == 1
        assert await parts.observe("a", rows(1, start=5)) == [2]


async def test_held_streams_are_never_evicted(backend: Backend) -> None:
    async with Parts.on(backend.open(), max_resident_streams=1) as parts:
        await _streams(parts, "a", "b", "c")
        async with parts.residency.hold(["a", "b", "a"]):
            assert parts.residency.held("a")
            assert parts.residency.held("b")
            await parts.residency.evict()
            assert {"a", "b"} <= {s for s in ("a", "b", "c") if s in parts.engine}
            assert "c" not in parts.engine
        assert not parts.residency.held("a")
        await parts.residency.evict()
        assert [s for s in ("a", "b", "c") if s in parts.engine] == ["b"]


async def test_a_hold_lasts_until_its_batch_is_applied_and_holds_nest(backend: Backend) -> None:
    async with Parts.on(backend.open(), max_resident_streams=1) as parts:
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with parts.residency.hold(["a"]) as outer:
            async with parts.residency.hold(["a"]):
                pass
            assert parts.residency.held("a"), "the outer hold still keeps it"
            outer.until(applied)
        assert parts.residency.held("a"), "until its batch is applied"
        applied.set_result(None)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
        assert not parts.residency.held("a")
        with pytest.raises(RuntimeError):
            async with parts.residency.hold(["b"]):
                raise RuntimeError("a failed request")
        assert not parts.residency.held("b")


async def test_a_queued_batch_holds_its_streams_until_it_is_applied(backend: Backend) -> None:
    async with Parts.on(backend.open(), max_resident_streams=1) as parts:
        await _streams(parts, "a", "b")
        gate = threading.Event()
        busy = asyncio.ensure_future(parts.scheduler.call(lambda engine: gate.wait(10)))
        items = [ObservationIn(x=[0.5, 0.5], y=1.0)]
        _, applied = await parts.registry.enqueue(items, default_stream="a", prefix="observations")
        assert parts.residency.held("a"), "validated and queued, not applied yet"
        gate.set()
        await busy
        assert [r.step for r in await applied] == [2]
        await asyncio.sleep(0)
        assert not parts.residency.held("a")


async def test_suspect_streams_stay_resident_until_settled(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(RedisStore(redis_backend.redis.url, timeout=0.5), max_resident_streams=1) as parts:
        await _streams(parts, "a", "b")
        redis_backend.redis.stop()
        with pytest.raises(Unavailable):
            await parts.observe("a", rows(1, start=7))
        redis_backend.redis.start()
        await until_up(parts.store)
        await parts.residency.evict()
        assert "a" in parts.engine, "its log may hold an orphan: dropping it would let a restore replay that"
        assert "b" not in parts.engine
