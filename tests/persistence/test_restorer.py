"""service/durability/restorer.py in-process: a stream comes back from its checkpoint and log tail exactly
as it was, many come back in one batch, and a corrupt checkpoint is reported for its stream alone."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import LINEAR, Parts, assert_same_state, rows
from trackin.service.errors import StreamCorrupt, Unavailable

pytestmark = pytest.mark.timeout(60)


def _restores(parts: Parts) -> float:
    return parts.sample("trackin_stream_restore_duration_seconds_count") or 0.0


async def test_a_stream_comes_back_from_its_checkpoint_and_log_tail(backend: Backend) -> None:
    async with Parts.on(backend.open()) as first:
        await first.create("a")
        await first.observe("a", rows(5))
        await first.checkpointer.checkpoint(["a"])
        await first.observe("a", rows(2, start=5))
        await first.observe("a", rows(1, start=7))  # logged only: in no checkpoint
        expected = await first.state("a")
        created_at = first.catalog.record("a").created_at  # type: ignore[union-attr]
        await first.crash()

    async with Parts.on(backend.open()) as second:
        record = await second.restorer.restore("a")
        assert record is not None
        assert record is second.catalog.record("a")
        assert (record.spec, record.created_at) == (LINEAR, created_at)
        assert_same_state(await second.state("a"), expected)
        assert second.ledger.count("a") == 8
        assert second.sample("trackin_observations_total", outcome="applied", transport="log") == 3
        assert _restores(second) == 1
        assert await second.observe("a", rows(1, start=8)) == [9]


async def test_checkpoint_mode_restores_the_checkpoint_alone(backend: Backend) -> None:
    async with Parts.on(backend.open(), durability="checkpoint") as first:
        await first.create("a")
        await first.observe("a", rows(4))
        await first.checkpointer.checkpoint(["a"])
        expected = await first.state("a")
        await first.observe("a", rows(3, start=4))  # lost to the crash: there is no log
        await first.crash()

    async with Parts.on(backend.open(), durability="checkpoint") as second:
        assert await second.restorer.restore("a") is not None
        assert_same_state(await second.state("a"), expected)
        assert second.ledger.count("a") == 4


async def test_unknown_streams_are_none_and_concurrent_restores_share_one_load(backend: Backend) -> None:
    async with Parts.on(backend.open()) as first:
        await first.create("a")
        await first.observe("a", rows(3))
        await first.crash()

    async with Parts.on(backend.open()) as second:
        assert await second.restorer.restore("nobody") is None
        records = await asyncio.gather(*(second.restorer.restore("a") for _ in range(5)))
        assert all(r is records[0] is not None for r in records)
        assert _restores(second) == 1
        assert second.ledger.count("a") == 3


async def test_a_corrupt_checkpoint_is_reported_for_its_stream_and_left_alone(backend: Backend) -> None:
    async with Parts.on(backend.open()) as first:
        for stream_id in ("bad", "good"):
            await first.create(stream_id)
            await first.observe(stream_id, rows(2))
        await first.checkpointer.checkpoint(["bad", "good"])
        await first.crash()
    garbage = random.Random(1).randbytes(len(backend.raw_tensors("bad")))
    backend.overwrite_tensors("bad", garbage)

    async with Parts.on(backend.open()) as second:
        for _ in range(2):  # asked again: the same answer, nothing quietly created meanwhile
            with pytest.raises(StreamCorrupt) as caught:
                await second.restorer.restore("bad")
            assert (caught.value.status, caught.value.stream) == (500, "bad")
            assert "bad" in caught.value.message
            assert "bad" not in second.engine
            assert "bad" not in second.catalog
        assert await second.restorer.restore("good") is not None
    assert backend.raw_tensors("bad") == garbage, "the stored bytes stay for an operator to rescue"


async def test_prefetch_restores_many_at_once_and_leaves_the_rest_to_restore(backend: Backend) -> None:
    ids = [f"s{i}" for i in range(6)]
    async with Parts.on(backend.open()) as first:
        for stream_id in [*ids, "bad"]:
            await first.create(stream_id)
            await first.observe(stream_id, rows(2))
        await first.crash()
    backend.overwrite_tensors("bad", b"\0" * len(backend.raw_tensors("bad")))

    async with Parts.on(backend.open()) as second:
        await second.restorer.prefetch([*ids, "s0", "bad", "unknown", "not an id!"])
        assert all(s in second.catalog and second.ledger.count(s) == 2 for s in ids)
        assert "bad" not in second.catalog
        assert "unknown" not in second.catalog
        assert _restores(second) == len(ids)
        with pytest.raises(StreamCorrupt):
            await second.restorer.restore("bad")


async def test_a_restore_of_a_stream_a_page_is_loading_waits_for_the_page(backend: Backend) -> None:
    ids = [f"s{i}" for i in range(4)]
    async with Parts.on(backend.open(), durability="checkpoint") as first:  # no log to take over first
        for stream_id in [*ids, "bad"]:
            await first.create(stream_id)
            await first.observe(stream_id, rows(2))
        await first.checkpointer.checkpoint([*ids, "bad"])
        await first.crash()
    backend.overwrite_tensors("bad", b"\0" * len(backend.raw_tensors("bad")))

    async with Parts.on(backend.open(), durability="checkpoint") as second:
        assert await second.restorer.restore("nobody") is None  # connected: the page's claim is not delayed
        page = asyncio.ensure_future(second.restorer.prefetch([*ids, "bad"]))
        await asyncio.sleep(0)  # the page has claimed its streams and is reading them
        waiting = [asyncio.ensure_future(second.restorer.restore(s)) for s in [*ids, "bad"]]
        await page
        *records, bad = await asyncio.gather(*waiting, return_exceptions=True)
        assert records == [second.catalog.record(s) for s in ids]
        assert None not in records
        assert isinstance(bad, StreamCorrupt)
        assert bad.stream == "bad"
        assert _restores(second) == len(ids), "each stream loaded once, by the page"
        assert all(second.ledger.count(s) == 2 for s in ids)


async def test_eager_restore_fills_memory_up_to_the_residency_limit(backend: Backend) -> None:
    async with Parts.on(backend.open()) as first:
        for i in range(5):
            await first.create(f"s{i}")
        await first.crash()

    async with Parts.on(backend.open(), restore_eagerly=True, max_resident_streams=3) as second:
        await second.loop.start()
        assert len(second.engine) == 3
        assert len(second.catalog) == 3


async def test_a_store_outage_during_a_restore_is_a_503(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(redis_backend.open()) as first:
        await first.create("a")
        await first.crash()

    async with Parts.on(redis_backend.open()) as second:
        await second.connection.require()
        redis_backend.redis.stop()
        with pytest.raises(Unavailable, match=r"^store unavailable, cannot restore 'a': "):
            await second.restorer.restore("a")
        with pytest.raises(Unavailable, match=r"^store unavailable, cannot restore streams: "):
            await second.restorer.prefetch(["a", "b"])
        assert second.sample("trackin_store_up") == 0
        assert "a" not in second.engine
