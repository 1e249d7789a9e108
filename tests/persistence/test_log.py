"""service/durability/log.py in-process: batches are in the store before they are applied, chained entry to
entry, and a 503 ("nothing applied") never turns into a replay, even when the store ran the append later.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import LINEAR, Parts, assert_same_state, logged, rows, until_up
from trackin.service.durability.payloads import plan_replay
from trackin.service.errors import Unavailable
from trackin.service.store import RedisStore

pytestmark = pytest.mark.timeout(60)


async def test_each_batch_is_logged_with_the_epoch_and_the_entry_it_builds_on(backend: Backend) -> None:
    async with Parts.on(backend.open()) as parts:
        await parts.create("a")
        await parts.create("b")
        await parts.observe("a", rows(3))
        await parts.observe("b", rows(1))
        await parts.observe("a", rows(2, start=3))
        written = await parts.store.read_batches("")
        assert len(written) == 3, "one entry per engine batch"
        entries = await logged(parts.store, "a")
        epoch = parts.connection.epoch
        assert [(e.epoch, len(e.inputs)) for e in entries] == [(epoch, 3), (epoch, 2)]
        assert entries[0].base == "", "the first entry builds on the creation checkpoint"
        assert entries[1].base == entries[0].position, "each entry builds on the one before"
        assert parts.ledger.position("a") == entries[1].position
        values = [(*x, *y) for e in entries for x, y in zip(e.inputs, e.targets, strict=True)]
        stepped_on = np.asarray(rows(5)).astype(np.float32)  # what a float32 stream steps on: all it logs
        np.testing.assert_array_equal(np.asarray(values), stepped_on)
        # What a restore would replay on top of the creation checkpoint: all of it, in order.
        plan = plan_replay(epoch or 0, "", entries)
        assert (len(plan.apply), plan.head, plan.skipped) == (2, entries[1].position, 0)


@pytest.mark.parametrize("float32", [True, False])
async def test_float32_streams_are_logged_in_format_4_unless_it_is_turned_off(
    backend: Backend, float32: bool
) -> None:
    """``log_float32=false`` keeps writing format 3 (earlier versions refuse 4), every value as sent."""
    async with Parts.on(backend.open(), log_float32=float32) as parts:
        await parts.create("a")
        await parts.observe("a", rows(3))
        [(_, _, payload)] = await parts.store.read_batches("")
        assert payload[1] == (4 if float32 else 3)
        [entry] = await logged(parts.store, "a")
        values = np.asarray([(*x, *y) for x, y in zip(entry.inputs, entry.targets, strict=True)])
        sent = np.asarray(rows(3))
        np.testing.assert_array_equal(values, sent.astype(np.float32) if float32 else sent)
        assert float32 == (not np.array_equal(values, sent)), "rows(3) holds values float32 rounds"


async def test_checkpoint_mode_logs_nothing(backend: Backend) -> None:
    async with Parts.on(backend.open(), durability="checkpoint") as parts:
        await parts.create("a")
        assert await parts.observe("a", rows(4)) == [1, 2, 3, 4]
        assert await parts.store.read_batches("") == []
        assert await parts.log.length() == 0


async def test_a_failed_append_applies_nothing_and_holds_the_stream_until_settled(
    redis_backend: Backend,
) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(RedisStore(redis_backend.redis.url, timeout=0.5)) as parts:
        await parts.create("a")
        await parts.create("b")
        await parts.observe("a", rows(2))
        before = await parts.state("a")

        redis_backend.redis.stop()
        with pytest.raises(Unavailable, match=r"^store unavailable, nothing applied: ") as caught:
            await parts.observe("a", rows(1, start=2))
        assert caught.value.retry_after == 1
        assert parts.ledger.count("a") == 2
        assert_same_state(await parts.state("a"), before)
        assert parts.log.suspects() == ["a"]

        redis_backend.redis.start()
        await until_up(parts.store)
        with pytest.raises(Unavailable, match="'a' is settling after a store failure") as settling:
            await parts.observe("a", rows(1, start=2))
        assert settling.value.stream == "a"
        assert await parts.observe("b", rows(1)) == [1], "other streams are not held up"

        await parts.loop.settle()
        assert parts.log.suspects() == []
        assert await parts.observe("a", rows(1, start=2)) == [3]


async def test_an_append_the_store_ran_after_the_503_is_never_replayed(redis_backend: Backend) -> None:
    """Redis paused mid-append: the client times out (503), then Redis runs the append anyway."""
    assert redis_backend.redis is not None
    redis = redis_backend.redis
    async with Parts.on(RedisStore(redis.url, timeout=0.3)) as parts:
        await parts.create("p")
        await parts.observe("p", rows(4))
        redis.pause()
        try:
            with pytest.raises(Unavailable, match="nothing applied"):
                await parts.observe("p", rows(1, start=4))
        finally:
            redis.resume()
        await until_up(parts.store)
        orphans = await logged(parts.store, "p", parts.ledger.position("p"))
        assert len(orphans) == 1, "the timed-out append ran after all: an orphan the client was refused"

        await parts.loop.settle()  # drop what this process wrote and never had acknowledged
        assert await logged(parts.store, "p", parts.ledger.position("p")) == []
        assert parts.log.suspects() == []
        assert await parts.observe("p", rows(1, start=5)) == [5]
        expected = await parts.state("p")
        await parts.crash()

    async with Parts.on(redis_backend.open()) as again:
        record = await again.restorer.restore("p")
        assert record is not None
        assert record.spec == LINEAR
        assert again.ledger.count("p") == 5
        assert_same_state(await again.state("p"), expected)
