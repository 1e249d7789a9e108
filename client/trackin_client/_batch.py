"""Batching for :mod:`trackin_client`: many observations per ``POST /v1/observations``.

Sending observations one per request costs a round trip and the server's per-request work each time;
a batcher collects them (for any streams) and sends ``size`` at a time, or after ``max_delay`` seconds.
Create them with ``client.batcher(size, max_delay=...)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from trackin_client._models import Observation, Result

__all__ = ["AsyncBatcher", "Batcher"]


class _Sender(Protocol):
    def observe_many(self, observations: Sequence[Observation]) -> list[Result]: ...


class _AsyncSender(Protocol):
    async def observe_many(self, observations: Sequence[Observation]) -> list[Result]: ...


def _check_size(size: int, max_delay: float | None) -> None:
    if size < 1:
        raise ValueError(f"Invalid batch size: {size}")
    if max_delay is not None and max_delay <= 0:
        raise ValueError(f"Invalid max_delay: {max_delay}")


class Batcher:
    """Accumulates observations (of any streams) and sends them ``size`` at a time to ``/v1/observations``.

    There is no thread: :meth:`add` sends when the batch is full or its oldest observation has waited
    ``max_delay`` seconds, and returns that batch's results (in the order added; ``[]`` when nothing was
    sent). Call :meth:`flush` when the feed pauses; leaving the ``with`` block flushes.
    """

    def __init__(self, client: _Sender, size: int = 1000, *, max_delay: float | None = None) -> None:
        _check_size(size, max_delay)
        self.client = client
        self.size = size
        self.max_delay = max_delay
        self._pending: list[Observation] = []
        self._since = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, observation: Observation) -> list[Result]:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(observation)
        late = self.max_delay is not None and time.monotonic() - self._since >= self.max_delay
        return self.flush() if len(self._pending) >= self.size or late else []

    def flush(self) -> list[Result]:
        """Send what is pending now (one request); its results, in order."""
        if not self._pending:
            return []
        batch, self._pending = self._pending, []
        return self.client.observe_many(batch)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.flush()


class AsyncBatcher:
    """Accumulates observations and sends them ``size`` at a time, or ``max_delay`` seconds after the
    first one of a batch arrived, whichever comes first.

    :meth:`add` returns a future for that observation's result (a failed batch sets ``TrackinError`` on all
    of its futures). Batches are sent one after the other, so steps keep the order of :meth:`add` calls.
    Use as ``async with``: leaving the block sends what is left and waits for it.
    """

    def __init__(self, client: _AsyncSender, size: int = 1000, *, max_delay: float = 0.05) -> None:
        _check_size(size, max_delay)
        self.client = client
        self.size = size
        self.max_delay = max_delay
        self._pending: list[tuple[Observation, asyncio.Future[Result]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._pending)

    async def add(self, observation: Observation) -> asyncio.Future[Result]:
        """Queue one observation; waits only when this completes a batch (sending it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((observation, future))
        if len(self._pending) >= self.size:
            await self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_delay, self._on_timer)
        return future

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send what is pending now and wait for its answer (results go to the futures)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        async with self._sending:  # FIFO: batches go out in the order they were cut
            try:
                results = await self.client.observe_many([obs for obs, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
