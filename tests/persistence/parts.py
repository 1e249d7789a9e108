"""Durability in-process: every part built as `trackin.service.app.build` builds it, on a real store.

The end-to-end tests reach durability through ``trackin serve`` processes; these helpers hand a test the
parts themselves (log, checkpointer, residency, restorer, loop) around a real engine, scheduler and
catalog, so one part can be driven and inspected directly. Nothing is mocked: the store is a SQLite file
or a real ``redis-server`` (`tests.persistence.conftest.Backend`), and faults are real ones (a stopped
or paused Redis, a closed store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Catalog
from trackin.service.domain.labels import PendingLabels
from trackin.service.domain.registry import Registry
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability import (
    Checkpointer,
    CheckpointLoop,
    Connection,
    Durability,
    DurabilityLog,
    Ledger,
    Residency,
    Restorer,
    StoreHealth,
)
from trackin.service.durability.payloads import LoggedBatch, decode_group
from trackin.service.metrics import Metrics
from trackin.service.settings import Settings
from trackin.service.store import Store, StoreUnavailable
from trackin.service.transport.wire import ObservationIn

LINEAR = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2, "init": "random", "seed": 5}})


@dataclass
class Parts:
    """One process's durability on ``store``: use as ``async with Parts.on(store) as parts``."""

    settings: Settings
    store: Store
    metrics: Metrics
    engine: Engine
    catalog: Catalog
    health: StoreHealth
    connection: Connection
    ledger: Ledger
    log: DurabilityLog
    scheduler: Scheduler
    checkpointer: Checkpointer
    residency: Residency
    restorer: Restorer
    loop: CheckpointLoop
    durability: Durability
    registry: Registry
    crashed: bool = False

    @classmethod
    def on(cls, store: Store, **settings: Any) -> Parts:
        """Built (not started) with ``settings`` over the defaults; the loop only runs if a test starts it."""
        config = Settings(**settings)
        metrics = Metrics(CollectorRegistry(), process_metrics=False)
        engine = Engine("cpu")
        catalog = Catalog()
        health = StoreHealth(metrics)
        connection = Connection(store, health, catalog)
        ledger = Ledger(config.checkpoint_every_steps, by_recency=config.max_resident_streams is not None)
        log = DurabilityLog(store, connection, ledger, health, float32=config.log_float32)
        log_mode = config.durability == "log"
        scheduler = Scheduler(
            engine,
            max_batch=config.max_batch_observations,
            before_apply=log.append if log_mode else None,
            after_apply=[ledger.applied],
        )
        checkpointer = Checkpointer(store, connection, ledger, scheduler, catalog, health, metrics)
        limit = config.max_resident_streams
        residency = Residency(limit, engine, scheduler, catalog, ledger, log, checkpointer, metrics)
        restorer = Restorer(
            store, connection, ledger, engine, scheduler, catalog, residency, health, metrics,
            replay_log=log_mode, limit=limit, checkpointer=checkpointer,
        )  # fmt: skip
        loop = CheckpointLoop(
            config, engine, connection, ledger, checkpointer, log, residency, restorer, health
        )
        durability = Durability(
            store, engine, connection, health, ledger, checkpointer, residency, restorer, loop
        )
        labels = PendingLabels(
            config.pending_label_ttl_seconds, config.max_pending_labels, config.max_pending_label_bytes
        )
        registry = Registry(scheduler, labels, catalog, durability)
        return cls(
            config, store, metrics, engine, catalog, health, connection, ledger, log, scheduler,
            checkpointer, residency, restorer, loop, durability, registry,
        )  # fmt: skip

    async def __aenter__(self) -> Parts:
        self.scheduler.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.crashed:
            return
        # Whatever fails, the store is shut down: a Redis connection outliving the test's event loop is a
        # ResourceWarning ("loop is closed") failing whichever later test's garbage collection finds it.
        try:
            await self.loop.stop()  # cancels the loop if a test started it; writes changed streams
            await self.scheduler.stop()
        finally:
            await self.store.shutdown()

    async def crash(self) -> None:
        """End as SIGKILL would: the store keeps what it holds, and nothing more is written."""
        self.crashed = True
        await self.scheduler.stop()
        await self.store.shutdown()

    # ----- helpers ----------------------------------------------------------------------------------------

    async def create(self, stream_id: str, spec: StreamSpec = LINEAR) -> None:
        assert await self.registry.put_stream(stream_id, spec) == "created"

    async def observe(self, stream_id: str, rows: Sequence[tuple[float, float, float]]) -> list[int]:
        """Observations ``(x0, x1, y)`` through the registry (logged, applied, counted); their steps."""
        items = [ObservationIn(x=[x0, x1], y=y) for x0, x1, y in rows]
        _, applied = await self.registry.enqueue(items, default_stream=stream_id, prefix="observations")
        return [r.step for r in await applied]

    async def state(self, stream_id: str) -> dict[str, torch.Tensor]:
        """The stream's tensors as the engine holds them now."""
        return await self.scheduler.call(lambda engine: engine.export(stream_id))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def until_up(store: Store, timeout: float = 10.0) -> None:
    """Wait until the store answers again (after a Redis restart the first call may find the old socket)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.ping()
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not come back"
            await asyncio.sleep(0.05)


async def logged(store: Store, stream_id: str, after: str = "") -> list[LoggedBatch]:
    """The stream's shares of the batch log's entries after ``after``, in order."""
    shares = [decode_group(p, payload).get(stream_id) for p, _, payload in await store.read_batches(after)]
    return [share for share in shares if share is not None]


def rows(n: int, start: int = 0) -> list[tuple[float, float, float]]:
    """Deterministic, well-conditioned observations for `LINEAR` streams."""
    return [(0.1 * (i % 7), 1.0 - 0.05 * (i % 5), 0.3 * (i % 3) - 0.2) for i in range(start, start + n)]


def assert_same_state(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    """Equal to the last bit: restoring must never change the arithmetic."""
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
