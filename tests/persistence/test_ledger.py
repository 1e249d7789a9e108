"""The ledger's streams due for a checkpoint: kept as batches are counted, equal to a scan of every stream."""

from __future__ import annotations

import random

import numpy as np

from trackin.service.domain.ingest import IngestBatch
from trackin.service.durability.ledger import Ledger


def _batch(stream_ids: list[str]) -> IngestBatch:
    n = len(stream_ids)
    return IngestBatch(stream_ids, x=np.zeros((n, 2)), y=np.zeros((n, 1)))


def _behind(ledger: Ledger, saved: dict[str, int], every: int) -> set[str]:
    """What the checkpoint loop used to compute per pass: a scan of every changed stream."""
    return {s for s in ledger.changed_streams() if ledger.count(s) - saved.get(s, 0) >= every}


def test_due_streams_follow_counts_checkpoints_and_restores() -> None:
    ledger = Ledger(every_steps=3)
    for s in ("a", "b", "c"):
        ledger.started(s)
    ledger.applied([_batch(["a", "a", "b"])], [], 0.0)
    assert ledger.due_streams() == []
    ledger.applied([_batch(["a", "b"]), _batch(["c"])], [], 0.0)
    assert ledger.due_streams() == ["a"]  # a: 3 steps; b: 2; c: 1
    ledger.applied([_batch(["b"])], [], 0.0)
    assert ledger.due_streams() == ["a", "b"]
    ledger.checkpointed("a", 2)  # a checkpoint of an earlier step: still 1 behind, not due
    assert ledger.due_streams() == ["b"]
    ledger.checkpointed("b", 3)
    assert ledger.due_streams() == []
    ledger.loaded("c", count=10, saved=6, head="")  # restored with a log tail 4 steps past its checkpoint
    assert ledger.due_streams() == ["c"]
    ledger.forget("c")
    ledger.started("d")
    ledger.applied([_batch(["d"] * 5)], [], 0.0)
    assert ledger.due_streams() == ["d"]
    ledger.started("d")  # deleted and created again: nothing applied
    assert ledger.due_streams() == []


def test_due_streams_equal_a_scan_over_random_traffic() -> None:
    """Whenever a pass asks, however many batches, checkpoints and restarts came since the last one."""
    rng = random.Random(7)
    every = 4
    streams = [f"s{i}" for i in range(30)]
    ledger = Ledger(every_steps=every)
    saved: dict[str, int] = {}  # each stream's last checkpointed count, as the test made them
    for s in streams:
        ledger.started(s)
    for _ in range(300):
        action = rng.random()
        if action < 0.7:
            ledger.applied([_batch(rng.choices(streams, k=rng.randint(1, 12)))], [], 0.0)
        elif action < 0.95:
            s = rng.choice(streams)
            saved[s] = max(ledger.count(s) - rng.randint(0, 5), 0)
            ledger.checkpointed(s, saved[s])
        else:
            s = rng.choice(streams)
            saved.pop(s, None)
            ledger.started(s)
        if rng.random() < 0.4:  # passes come now and then: several batches, checkpoints, restarts between
            assert set(ledger.due_streams()) == _behind(ledger, saved, every)
    assert set(ledger.due_streams()) == _behind(ledger, saved, every)
    assert ledger.due_streams(), "the traffic left some stream due"


def test_without_recency_the_resident_streams_are_still_listed() -> None:
    """Without eviction the ledger skips the recency order; shutdown still checkpoints from `recent`, so it
    must hold every resident stream (created, restored, or applied since) and none forgotten."""
    ordered, plain = Ledger(every_steps=3), Ledger(every_steps=3, by_recency=False)
    for ledger in (ordered, plain):
        for s in ("a", "b", "c"):
            ledger.started(s)
        ledger.loaded("d", count=4, saved=4, head="")
        ledger.applied([_batch(["c", "a", "c"])], [], 0.0)
        ledger.forget("b")
        ledger.applied([_batch(["d"])], [], 0.0)
    assert ordered.recent() == ["c", "a", "d"]  # least recently used first
    assert sorted(plain.recent()) == ["a", "c", "d"]
    assert [plain.count(s) for s in "acd"] == [ordered.count(s) for s in "acd"] == [1, 2, 5]
    assert plain.due_streams() == ordered.due_streams() == []
    plain.applied([_batch(["a", "a"])], [], 0.0)
    assert plain.due_streams() == ["a"]
