"""service/durability/health.py in-process: a store failure becomes one 503, and ``trackin_store_up`` follows.

The faults are real: a SQLite store that is not open, a Redis server that was stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.persistence.conftest import Backend
from tests.persistence.parts import Parts, until_up
from trackin.service.durability import StoreHealth
from trackin.service.errors import Unavailable
from trackin.service.metrics import Metrics
from trackin.service.store import SQLiteStore

pytestmark = pytest.mark.timeout(60)


def _health() -> tuple[StoreHealth, CollectorRegistry]:
    registry = CollectorRegistry()
    return StoreHealth(Metrics(registry, process_metrics=False)), registry


async def test_a_store_failure_is_a_503_saying_what_failed_and_why(tmp_path: Path) -> None:
    health, registry = _health()
    health.mark(True)
    store = SQLiteStore(tmp_path / "never-opened.sqlite3")
    with pytest.raises(Unavailable) as caught, health.store_errors("store unavailable, cannot restore 'x'"):
        await store.read_checkpoint("x")
    error = caught.value
    assert (error.status, error.retry_after) == (503, 1)
    assert error.body() == {
        "error": {
            "code": "unavailable",
            "message": "store unavailable, cannot restore 'x': SQLite store is not started",
            "field": None,
            "stream": None,
        }
    }
    assert error.__suppress_context__, "the store's traceback is not the client's business"
    assert not health.up
    assert registry.get_sample_value("trackin_store_up") == 0


async def test_other_errors_pass_through_and_leave_the_store_up(tmp_path: Path) -> None:
    health, registry = _health()
    health.mark(True)
    async with SQLiteStore(tmp_path / "s.sqlite3") as store:
        with pytest.raises(ValueError, match="Invalid stream id"), health.store_errors():
            await store.read_checkpoint("not an id!")  # a caller's bug, not the store's state
        with health.store_errors():
            assert await store.read_checkpoint("x") is None
    assert health.up
    assert registry.get_sample_value("trackin_store_up") == 1


async def test_an_ordinary_success_does_not_claim_the_store_is_back(tmp_path: Path) -> None:
    health, registry = _health()
    health.mark(False)
    with health.store_errors():
        pass  # code that never reached the store proves nothing
    assert not health.up
    health.mark(True, log_entries=7)
    assert registry.get_sample_value("trackin_store_up") == 1
    assert registry.get_sample_value("trackin_log_entries") == 7


async def test_readiness_follows_redis_going_away_and_coming_back(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    async with Parts.on(redis_backend.open()) as parts:
        assert not await parts.durability.is_up(), "not connected yet"
        await parts.connection.require()
        assert await parts.durability.is_up()
        assert parts.sample("trackin_store_up") == 1

        redis_backend.redis.stop()
        assert not await parts.durability.is_up()
        assert parts.sample("trackin_store_up") == 0
        with pytest.raises(Unavailable, match=r"^store unavailable: "):
            await parts.durability.stored_ids("", 10, None)

        redis_backend.redis.start()
        await until_up(parts.store)
        assert await parts.durability.is_up()
        assert parts.sample("trackin_store_up") == 1
