"""service/durability/loop.py in-process: background passes keep the store current, the last pass at
shutdown writes every changed stream, and a store that is down at start is taken up when it returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.persistence.conftest import Backend
from tests.persistence.parts import LINEAR, Parts, rows
from trackin.service.domain.catalog import Template
from trackin.service.store import RedisStore, SQLiteStore

pytestmark = pytest.mark.timeout(60)


async def _eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _stored_step(parts: Parts, stream_id: str) -> int | None:
    stored = await parts.store.read_checkpoint(stream_id)
    return None if stored is None else stored.step


async def test_the_last_pass_writes_every_changed_stream(backend: Backend) -> None:
    async with Parts.on(backend.open(), checkpoint_interval_seconds=3600) as parts:
        await parts.create("a")
        await parts.create("b")
        await parts.observe("a", rows(3))
        await parts.observe("b", rows(2))
        await parts.loop.stop()  # the SIGTERM path
        assert await _stored_step(parts, "a") == 3
        assert await _stored_step(parts, "b") == 2
        assert await parts.store.read_batches("") == [], "the log is trimmed behind the checkpoints"


async def test_passes_write_a_stream_once_it_is_n_steps_behind(backend: Backend) -> None:
    async with Parts.on(backend.open(), checkpoint_every_steps=3, checkpoint_interval_seconds=3600) as parts:
        await parts.create("a")
        await parts.create("b")
        await parts.loop.start()
        await parts.observe("a", rows(2))
        await parts.observe("b", rows(1))
        await asyncio.sleep(0.6)  # several passes
        assert not parts.ledger.clean("a"), "2 steps behind: not yet"
        await parts.observe("a", rows(1, start=2))
        await _eventually(lambda: parts.ledger.clean("a"), "a written once 3 steps behind")
        assert await _stored_step(parts, "a") == 3
        assert not parts.ledger.clean("b"), "1 step behind and no interval due"


async def test_passes_write_every_changed_stream_on_the_interval(backend: Backend) -> None:
    async with Parts.on(
        backend.open(), checkpoint_every_steps=1000, checkpoint_interval_seconds=0.3
    ) as parts:
        await parts.create("a")
        await parts.loop.start()
        await parts.observe("a", rows(1))
        await _eventually(lambda: parts.ledger.clean("a"), "a written on the interval")
        assert await _stored_step(parts, "a") == 1


async def test_a_store_down_at_start_is_taken_up_when_it_returns(redis_backend: Backend) -> None:
    assert redis_backend.redis is not None
    redis = redis_backend.redis
    async with Parts.on(redis_backend.open()) as first:
        await first.registry.put_template(Template("t", "t-", LINEAR, 60.0))
        for stream_id in ("t-1", "t-2"):
            await first.create(stream_id)
        await first.crash()

    redis.stop()
    async with Parts.on(RedisStore(redis.url, timeout=0.3), restore_eagerly=True) as parts:
        await parts.loop.start()  # logs that it will retry; does not fail the start
        assert not parts.connection.connected
        assert parts.catalog.template("t") is None
        redis.start()
        await _eventually(lambda: len(parts.catalog) == 2, "the eager restore once the store is back")
        assert parts.connection.connected
        assert parts.catalog.template("t") == Template("t", "t-", LINEAR, 60.0)
        assert parts.connection.known == 2
        assert parts.sample("trackin_store_up") == 1


class _GatedStore(SQLiteStore):
    """A SQLite store whose ``log_length`` first waits under ``asyncio.wait_for`` (as redis-py sends every
    command) for the test to open a gate, so the call completes in the loop iteration the test picks."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = asyncio.Event()
        self.gate: asyncio.Future[None] | None = None

    async def log_length(self) -> int:
        self.gate = asyncio.get_running_loop().create_future()
        self.entered.set()
        await asyncio.wait_for(self.gate, 5)
        return await super().log_length()


async def test_stop_ends_the_loop_when_a_store_call_swallows_the_cancellation(tmp_path: Path) -> None:
    """On Python 3.11 ``wait_for`` drops a cancellation that comes as its call completes (service/tasks.py):
    the pass goes on. ``stop`` must still end the loop (it waited forever: the interval test's hang)."""
    store = _GatedStore(tmp_path / "gated.sqlite3")
    async with Parts.on(store, checkpoint_interval_seconds=0.05) as parts:
        await parts.create("a")
        await parts.loop.start()
        await asyncio.wait_for(store.entered.wait(), 10)  # a full pass reads the log's length
        assert store.gate is not None
        store.gate.set_result(None)  # completes in the iteration in which stop cancels the loop
        stopping = asyncio.create_task(parts.loop.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        if not done:
            stopping.cancel()  # cancels the loop task it awaits, so the test ends instead of hanging
        assert done, "loop.stop() still waits for a loop that swallowed its cancellation"
        stopping.result()
        assert await _stored_step(parts, "a") == 0
