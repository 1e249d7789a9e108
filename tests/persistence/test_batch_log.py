"""The batch log (group commit) across crashes, in-process on real stores: one entry per engine batch;
a restart takes earlier owners' entries over (replays what follows each checkpoint, once), including the
per-stream log of servers before the batch log; each owner trims its own entries behind every checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import Parts, assert_same_state, logged, rows
from trackin.service.domain.ingest import IngestBatch
from trackin.service.durability.payloads import encode_batches
from trackin.service.store import LogEntry
from trackin.service.transport.wire import ObservationIn

pytestmark = pytest.mark.timeout(60)


def _batch(stream_id: str, observations: list[tuple[float, float, float]]) -> IngestBatch:
    table = np.asarray(observations, dtype=np.float64)
    return IngestBatch([stream_id] * len(table), x=table[:, :2], y=table[:, 2:])


async def _observe_many(parts: Parts, pairs: list[tuple[str, tuple[float, float, float]]]) -> None:
    """One request naming several streams: one engine batch, one log entry."""
    items = [ObservationIn(stream=s, x=[x0, x1], y=y) for s, (x0, x1, y) in pairs]
    _, applied = await parts.registry.enqueue(items, default_stream=None, prefix="observations")
    await applied


async def test_a_restart_replays_what_follows_each_checkpoint_once_then_drops_the_old_entries(
    backend: Backend,
) -> None:
    async with Parts.on(backend.open()) as first:
        for stream_id in ("a", "b", "ref"):
            await first.create(stream_id)
        await first.observe("a", rows(3))
        await first.checkpointer.checkpoint(["a"])  # a: 3 in its checkpoint, 2 more after it
        await _observe_many(first, [("a", r) for r in rows(2, start=3)] + [("b", r) for r in rows(4)])
        await first.observe("ref", rows(5))
        assert len(await first.store.read_batches("")) == 3, "one entry per engine batch"
        expected = {s: await first.state(s) for s in ("a", "b")}
        await first.crash()

    async with Parts.on(backend.open()) as second:
        record = await second.restorer.restore("a")  # lazy, one stream: takes the log over first
        assert record is not None
        assert (second.ledger.count("a"), second.ledger.count("b")) == (5, 4)
        assert_same_state(await second.state("a"), expected["a"])
        assert_same_state(
            await second.state("a"), await second.state("ref") if "ref" in second.engine else {}
        )
        assert_same_state(await second.state("b"), expected["b"])
        assert await second.store.read_batches("") == [], "taken over: checkpointed, then deleted"
        stored = await second.store.read_checkpoint("a")
        assert stored is not None
        assert (stored.epoch, stored.step) == (second.connection.epoch, 5)
        await second.crash()

    async with Parts.on(backend.open()) as third:  # nothing is applied twice
        assert await third.restorer.restore("a") is not None
        assert third.ledger.count("a") == 5
        assert_same_state(await third.state("a"), expected["a"])


async def test_a_batch_logged_but_not_applied_before_a_crash_is_applied_once_after_it(
    backend: Backend,
) -> None:
    """SIGKILL between the append and the engine call: the batch is durable, so it is replayed."""
    async with Parts.on(backend.open()) as first:
        await first.create("a")
        await first.create("ref")
        await first.observe("a", rows(3))
        await first.observe("ref", rows(5))
        await first.log.append([_batch("a", rows(2, start=3))])  # the scheduler's before_apply, then dead
        assert first.ledger.count("a") == 3
        reference = await first.state("ref")
        await first.crash()

    async with Parts.on(backend.open()) as second:
        await second.loop.start()  # the start-up pass takes the log over
        assert second.ledger.count("a") == 5
        assert_same_state(await second.state("a"), reference)
        await second.loop.stop()
        assert await second.store.read_batches("") == []


async def test_the_per_stream_log_of_the_old_layout_is_replayed_after_an_upgrade(backend: Backend) -> None:
    async with Parts.on(backend.open()) as old:
        await old.create("old")
        await old.create("ref")
        await old.observe("ref", rows(4))
        reference = await old.state("ref")
        epoch = old.connection.epoch
        assert epoch is not None
        # What a server before the batch log wrote: one per-stream entry per batch, chained by base.
        first = encode_batches([_batch("old", rows(2))], epoch, {"old": ""})["old"]
        [position] = await old.store.append_log([LogEntry("old", first)])
        second = encode_batches([_batch("old", rows(2, start=2))], epoch, {"old": position})["old"]
        await old.store.append_log([LogEntry("old", second)])
        await old.crash()

    async with Parts.on(backend.open()) as new:
        assert await new.restorer.restore("old") is not None
        assert new.ledger.count("old") == 4
        assert_same_state(await new.state("old"), reference)
        assert await new.store.read_log("old", "") == [], "trimmed once checkpointed"
        assert await new.store.legacy_log_streams() == []
        await new.observe("old", rows(1, start=4))
        await new.crash()

    async with Parts.on(backend.open()) as newer:
        assert await newer.restorer.restore("old") is not None
        assert newer.ledger.count("old") == 5


async def test_trimming_keeps_every_entry_a_stream_not_checkpointed_past_it_needs(backend: Backend) -> None:
    async with Parts.on(backend.open()) as parts:
        await parts.create("a")
        await parts.create("b")
        await parts.observe("a", rows(1))
        await parts.observe("b", rows(1))
        await parts.checkpointer.checkpoint(["a"])
        await parts.log.trim()
        assert len(await parts.store.read_batches("")) == 2, "b's checkpoint is older than both entries"
        await parts.checkpointer.checkpoint(["b"])
        await parts.log.trim()
        assert await parts.store.read_batches("") == []

        await parts.observe("a", rows(1, start=1))  # covered by a's next checkpoint
        await parts.checkpointer.checkpoint(["a"])
        await parts.observe("b", rows(2, start=1))  # after every checkpoint
        await parts.log.trim()
        assert [len(e.inputs) for e in await logged(parts.store, "b")] == [2]
        expected = {s: await parts.state(s) for s in ("a", "b")}
        await parts.crash()

    async with Parts.on(backend.open()) as again:
        await again.restorer.adopt()
        assert (again.ledger.count("a"), again.ledger.count("b")) == (2, 3)
        for stream_id, state in expected.items():
            assert_same_state(await again.state(stream_id), state)
