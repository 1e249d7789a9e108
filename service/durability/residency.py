"""Bounded residency: at most ``max_resident_streams`` streams in memory.

The least recently used streams beyond the limit are checkpointed and dropped; the next request for one
restores it. Streams a request is using are *held*: ``async with residency.hold(ids):`` keeps them
resident for the block, and `Hold.until` extends that to a queued batch's application, so a stream is
never dropped between a request's validation and its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from trackin.models.engine import Engine
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability.checkpointer import Checkpointer
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.log import DurabilityLog
from trackin.service.durability.records import Records
from trackin.service.metrics import Metrics

__all__ = ["Hold", "Residency"]


class _Pins:
    """How many holds keep each stream resident."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._counts

    def add(self, stream_ids: Iterable[str]) -> None:
        counts = self._counts
        for stream_id in stream_ids:
            counts[stream_id] = counts.get(stream_id, 0) + 1

    def remove(self, stream_ids: Iterable[str]) -> None:
        counts = self._counts
        for stream_id in stream_ids:
            left = counts.get(stream_id, 0) - 1
            if left > 0:
                counts[stream_id] = left
            else:
                counts.pop(stream_id, None)


class Hold:
    """Streams kept resident while the ``async with`` block runs, and after `until` until a future is done."""

    def __init__(self, pins: _Pins, stream_ids: Iterable[str]) -> None:
        self._pins = pins
        self._ids = list(dict.fromkeys(stream_ids))
        self._until: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> Hold:
        self._pins.add(self._ids)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        until = self._until
        if until is None or until.done():
            self._pins.remove(self._ids)
        else:
            until.add_done_callback(lambda _: self._pins.remove(self._ids))

    def until(self, done: asyncio.Future[Any]) -> None:
        """Keep holding after the block until ``done`` is (a queued batch: until it is applied)."""
        self._until = done


class _NoHold(Hold):
    """What `Residency.hold` gives without a limit: nothing to pin, nothing kept, one shared instance."""

    async def __aenter__(self) -> Hold:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def until(self, done: asyncio.Future[Any]) -> None:
        return None


_UNPINNED = _NoHold(_Pins(), ())


class Residency:
    """Holds, and eviction of least recently used streams beyond ``limit`` (None: no limit)."""

    def __init__(
        self,
        limit: int | None,
        engine: Engine,
        scheduler: Scheduler,
        records: Records,
        ledger: Ledger,
        log: DurabilityLog,
        checkpointer: Checkpointer,
        metrics: Metrics,
    ) -> None:
        self._limit = limit
        self._engine = engine
        self._scheduler = scheduler
        self._records = records
        self._ledger = ledger
        self._log = log
        self._checkpointer = checkpointer
        self._metrics = metrics
        self._pins = _Pins()
        self._evicting: dict[str, asyncio.Event] = {}

    def hold(self, stream_ids: Iterable[str]) -> Hold:
        """Pins the streams while a request uses them; without a limit nothing is ever evicted, so a
        request pins nothing (two dict updates per stream it names, about 0.2 us per observation)."""
        if self._limit is None:
            return _UNPINNED
        return Hold(self._pins, stream_ids)

    def held(self, stream_id: str) -> bool:
        return stream_id in self._pins

    def evicting(self, stream_id: str) -> asyncio.Event | None:
        """Set once the stream's eviction is over; None when it is not being evicted."""
        return self._evicting.get(stream_id)

    async def evict(self) -> None:
        """Checkpoint and drop least recently used streams beyond the limit.

        Victims are chosen and unregistered in one step on the event loop (no await in between), skipping
        held and suspect streams; a request arriving meanwhile restores the stream from the checkpoint
        just written, after waiting for the drop to finish.
        """
        engine, ledger = self._engine, self._ledger
        if self._limit is None or len(engine) <= self._limit:
            return
        excess = len(engine) - self._limit
        candidates = [
            s for s in ledger.recent() if s not in self._pins and not self._log.is_suspect(s) and s in engine
        ][: excess * 2]
        if not candidates:
            return
        await self._checkpointer.checkpoint(candidates)
        victims = [s for s in candidates if s not in self._pins and ledger.clean(s)][:excess]
        if not victims:
            return
        done = asyncio.Event()
        for s in victims:
            self._records.remove(s)
            self._evicting[s] = done

        def drop(engine: Engine) -> None:
            for s in victims:
                if s in engine:
                    engine.remove(s)

        try:
            await self._scheduler.call(drop)
        finally:
            for s in victims:
                self._evicting.pop(s, None)
                ledger.forget(s)
            done.set()
        self._metrics.evicted(len(victims))
