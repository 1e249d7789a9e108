"""What the engine's state costs: sized before allocating, bounded by a budget, given back on removal."""

from __future__ import annotations

import pytest

from trackin.models.engine import Engine, MemoryBudgetError
from trackin.models.pool import INITIAL_POOL_BYTES, slot_bytes
from trackin.models.specs import StreamSpec

LINEAR = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 4}})
WIDE = StreamSpec.model_validate({"model": {"family": "mlp", "in_dim": 4, "hidden": [512, 512]}})


def test_slot_bytes_is_what_the_pool_allocates_per_slot() -> None:
    for spec in (LINEAR, WIDE):
        engine = Engine()
        engine.add("a", spec)
        pool = engine.pools[0]
        assert pool.state_bytes() == pool.capacity * slot_bytes(spec)


def test_a_pool_of_wide_models_does_not_reserve_sixteen_streams() -> None:
    assert slot_bytes(WIDE) > INITIAL_POOL_BYTES
    engine = Engine()
    engine.add("wide", WIDE)
    engine.add("lin", LINEAR)
    capacities = {p.template.model.family: p.capacity for p in engine.pools}
    assert capacities == {"mlp": 1, "linear": 16}


def test_removing_the_last_stream_of_a_pool_frees_it() -> None:
    engine = Engine()
    for i in range(5):
        engine.add(f"w{i}", WIDE)
    engine.add("lin", LINEAR)
    wide_bytes = engine.state_bytes() - 16 * slot_bytes(LINEAR)
    assert wide_bytes >= 5 * slot_bytes(WIDE)
    for i in range(5):
        engine.remove(f"w{i}")
    assert engine.state_bytes() == 16 * slot_bytes(LINEAR)
    assert [p.template.model.family for p in engine.pools] == ["linear"]
    engine.add("again", WIDE)  # a new pool, from scratch
    assert engine.locate("again").pool.capacity == 1


def test_the_budget_refuses_a_stream_before_allocating_anything() -> None:
    budget = 3 * slot_bytes(WIDE) + 16 * slot_bytes(LINEAR)
    engine = Engine(memory_budget=budget)
    engine.add("lin", LINEAR)
    engine.add("w0", WIDE)
    engine.add("w1", WIDE)  # the pool doubles to 2 slots
    before = engine.state_bytes()
    with pytest.raises(MemoryBudgetError) as info:
        engine.add("w2", WIDE)  # doubling to 4 slots would need 4 wide slots in all
    assert info.value.needed == 2 * slot_bytes(WIDE)
    assert "w2" not in engine
    assert engine.state_bytes() == before
    for i in range(15):
        engine.add(f"lin{i}", LINEAR)  # a free slot costs nothing more
    engine.remove("w1")
    engine.add("w2", WIDE)  # the freed slot is reused
    assert engine.state_bytes() == before
