"""service/durability/checkpointer.py in-process: changed streams written in one batch, the log trimmed
behind them, and writes fenced by ``(epoch, count)`` so a stale owner can never overwrite a newer one."""

from __future__ import annotations

import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import LINEAR, Parts, assert_same_state, rows, until_up
from trackin.service.domain.catalog import Template
from trackin.service.durability.records import COUNT_KEY
from trackin.service.errors import Unavailable
from trackin.service.store import RedisStore, decode_state

pytestmark = pytest.mark.timeout(60)


def _writes(parts: Parts, outcome: str) -> float:
    return parts.sample("trackin_checkpoint_writes_total", outcome=outcome) or 0.0


async def test_only_streams_that_changed_are_written(backend: Backend) -> None:
    async with Parts.on(backend.open()) as parts:
        await parts.create("a")
        await parts.create("b")
        assert _writes(parts, "accepted") == 2, "a new stream is stored at once"
        await parts.observe("a", rows(3))
        assert await parts.checkpointer.checkpoint(["a", "b"]) == ["a"]
        assert await parts.checkpointer.checkpoint(["a", "b"]) == [], "nothing changed since"
        stored = await parts.store.read_checkpoint("a")
        assert stored is not None
        assert (stored.epoch, stored.step, stored.meta[COUNT_KEY]) == (parts.connection.epoch, 3, 3)
        assert_same_state(decode_state("a", stored.tensors, stored.meta), await parts.state("a"))
        assert parts.ledger.clean("a")
        assert _writes(parts, "accepted") == 3


async def test_a_checkpoint_covers_the_log_up_to_its_position_and_trims_it(backend: Backend) -> None:
    async with Parts.on(backend.open()) as parts:
        await parts.create("a")
        await parts.observe("a", rows(2))
        await parts.observe("a", rows(2, start=2))
        assert len(await parts.store.read_batches("")) == 2
        await parts.log.trim()
        assert len(await parts.store.read_batches("")) == 2, "nothing is trimmed before a checkpoint"
        await parts.checkpointer.checkpoint(["a"])
        stored = await parts.store.read_checkpoint("a")
        assert stored is not None
        assert stored.log_position == parts.ledger.position("a") != ""
        await parts.log.trim()
        assert await parts.store.read_batches("") == []
        assert await parts.log.length() == 0


async def test_a_newer_owner_fences_the_older_one_out(backend: Backend) -> None:
    async with Parts.on(backend.open()) as old:
        await old.create("x")
        await old.observe("x", rows(3))
        await old.checkpointer.checkpoint(["x"])
        async with Parts.on(backend.open()) as new:
            assert await new.restorer.restore("x") is not None
            await new.observe("x", rows(2, start=3))
            assert await new.checkpointer.checkpoint(["x"]) == ["x"]
            taken = await new.store.read_checkpoint("x")
            assert taken is not None
            assert taken.epoch == new.connection.epoch
            assert new.connection.epoch > old.connection.epoch  # type: ignore[operator]

            await old.observe("x", rows(3, start=10))  # more steps than the new owner, older epoch
            assert await old.checkpointer.checkpoint(["x"]) == []
            assert _writes(old, "rejected_stale") == 1
            stored = await old.store.read_checkpoint("x")
            assert stored is not None
            assert (stored.epoch, stored.step, stored.tensors) == (taken.epoch, 5, taken.tensors)
            assert old.ledger.clean("x"), "refused means settled: the next pass does not retry forever"


async def test_a_failed_write_is_a_503_counted_and_retried_later(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(RedisStore(redis_backend.redis.url, timeout=0.5), durability="checkpoint") as parts:
        await parts.create("a")
        await parts.observe("a", rows(3))
        redis_backend.redis.stop()
        with pytest.raises(Unavailable, match=r"^store unavailable: ") as caught:
            await parts.checkpointer.checkpoint(["a"])
        assert caught.value.status == 503
        assert _writes(parts, "failed") == 1
        assert parts.sample("trackin_checkpoint_failures_total") == 1
        assert parts.sample("trackin_store_up") == 0
        assert parts.ledger.changed("a"), "still to be written"

        redis_backend.redis.start()
        await until_up(parts.store)
        assert await parts.checkpointer.checkpoint(["a"]) == ["a"]
        assert parts.sample("trackin_store_up") == 1


async def test_what_cannot_be_stored_is_not_changed(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(RedisStore(redis_backend.redis.url, timeout=0.5)) as parts:
        await parts.create("a")
        kept = Template("kept", "k-", LINEAR, 60.0)
        await parts.registry.put_template(kept)
        redis_backend.redis.stop()
        with pytest.raises(Unavailable) as caught:
            await parts.registry.put_stream("b", LINEAR)
        assert caught.value.status == 503
        assert "b" not in parts.catalog
        assert "b" not in parts.engine
        assert "b" not in parts.ledger.recent()
        assert parts.connection.known == 1
        with pytest.raises(Unavailable):
            await parts.registry.put_template(Template("new", "n-", LINEAR, 60.0))
        with pytest.raises(Unavailable):
            await parts.registry.delete_template("kept")
        assert parts.registry.templates() == [kept], "a 503 leaves the templates as they were"
