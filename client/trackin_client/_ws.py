"""WebSocket sessions for :mod:`trackin_client`: pipelined ``{"seq", "observations"}`` messages.

A session keeps up to ``max_in_flight`` messages unanswered on one connection (the server's own bounds are
``max_ws_in_flight``, 256 messages by default, and ``max_ws_in_flight_bytes``, 64 MiB of frames; past them the
server stops reading, so a larger client bound only queues in TCP). The server answers in order, so answers
are matched to messages first in, first out, and the ``seq`` each answer carries is checked. MessagePack
binary frames by default (``binary=False``: JSON text).

Example::

    async with AsyncTrackinClient(url) as client, client.ws() as ws:
        async for results in ws.stream(messages):  # each message: a list of observations with "stream"
            ...
        results = await ws.send([{"stream": "ES", "value": [4321.25]}])  # one round trip
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Self

import msgspec
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from trackin_client._models import Observation, Result, TrackinError

__all__ = ["AsyncWsSession", "WsSession"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _encode(seq: int, observations: Sequence[Observation], binary: bool) -> bytes | str:
    body = {"seq": seq, "observations": list(observations)}
    return msgspec.msgpack.encode(body) if binary else msgspec.json.encode(body).decode()


def _results(data: bytes | str, seq: int) -> list[Result]:
    """The results of answer ``data`` to message ``seq``; ``TrackinError`` for an error answer."""
    reply: Any = msgspec.msgpack.decode(data) if isinstance(data, bytes) else msgspec.json.decode(data)
    if not isinstance(reply, dict):
        raise TrackinError("protocol_error", f"unexpected answer {str(reply)[:200]}")
    if "error" in reply:
        raise TrackinError.from_body(reply)
    if reply.get("seq") != seq:
        raise TrackinError("protocol_error", f"answer for seq {reply.get('seq')} while expecting {seq}")
    results: list[Result] = reply["results"]
    return results


def _closed(reason: object) -> TrackinError:
    return TrackinError("connection_closed", f"the WebSocket closed: {reason}")


def _check_bound(max_in_flight: int) -> None:
    if max_in_flight < 1:
        raise ValueError(f"Invalid max_in_flight: {max_in_flight}")


class WsSession:
    """Blocking session: :meth:`stream` sends ahead up to ``max_in_flight`` messages, yields in order."""

    def __init__(
        self, url: str, *, max_in_flight: int = 8, binary: bool = True, api_key: str | None = None
    ) -> None:
        _check_bound(max_in_flight)
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.max_in_flight = max_in_flight
        self.binary = binary
        self._seq = itertools.count()
        self._ws: SyncConnection | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Self:
        connection = sync_connect(
            self.url, compression=None, max_size=MAX_MESSAGE_BYTES, additional_headers=self._headers
        )
        self._ws = self._exit.enter_context(connection)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ws = None
        self._exit.close()

    @property
    def _conn(self) -> SyncConnection:
        if self._ws is None:
            raise RuntimeError("the session is not open: use it in a `with` block")
        return self._ws

    def send(self, observations: Sequence[Observation]) -> list[Result]:
        """One message, one round trip."""
        return next(self.stream([observations]))

    def stream(self, messages: Iterable[Sequence[Observation]]) -> Iterator[list[Result]]:
        """Each message's results, in order, with up to ``max_in_flight`` messages on the wire."""
        ws = self._conn
        waiting: collections.deque[int] = collections.deque()
        try:
            for observations in messages:
                if len(waiting) >= self.max_in_flight:
                    yield _results(ws.recv(), waiting.popleft())
                seq = next(self._seq)
                ws.send(_encode(seq, observations, self.binary))
                waiting.append(seq)
            while waiting:
                yield _results(ws.recv(), waiting.popleft())
        except ConnectionClosed as exc:
            raise _closed(exc) from exc


class AsyncWsSession:
    """Asyncio session: concurrent :meth:`send` calls and :meth:`stream` share one pipelined connection."""

    def __init__(
        self, url: str, *, max_in_flight: int = 8, binary: bool = True, api_key: str | None = None
    ) -> None:
        _check_bound(max_in_flight)
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.max_in_flight = max_in_flight
        self.binary = binary
        self._seq = itertools.count()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: collections.deque[tuple[int, asyncio.Future[list[Result]]]] = collections.deque()
        self._ws: AsyncConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failure: TrackinError | None = None

    async def __aenter__(self) -> Self:
        self._ws = await async_connect(
            self.url, compression=None, max_size=MAX_MESSAGE_BYTES, additional_headers=self._headers
        )
        self._reader = asyncio.create_task(self._read(self._ws))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self._ws = self._reader = None

    async def submit(self, observations: Sequence[Observation]) -> asyncio.Future[list[Result]]:
        """Send one message (waiting for a free slot) and return the future of its results."""
        if self._ws is None:
            raise RuntimeError("the session is not open: use it in an `async with` block")
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        seq = next(self._seq)
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._waiting.append((seq, future))
        try:
            await self._ws.send(_encode(seq, observations, self.binary))
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        return future

    async def send(self, observations: Sequence[Observation]) -> list[Result]:
        """One message's results (other messages may be in flight meanwhile)."""
        return await (await self.submit(observations))

    async def stream(
        self, messages: Iterable[Sequence[Observation]] | AsyncIterable[Sequence[Observation]]
    ) -> AsyncIterator[list[Result]]:
        """Each message's results, in order, keeping up to ``max_in_flight`` messages on the wire."""
        ahead: collections.deque[asyncio.Future[list[Result]]] = collections.deque()
        async for observations in _aiter(messages):
            while ahead and (ahead[0].done() or len(ahead) >= self.max_in_flight):
                yield await ahead.popleft()
            ahead.append(await self.submit(observations))
        while ahead:
            yield await ahead.popleft()

    async def _read(self, ws: AsyncConnection) -> None:
        error: BaseException | None = None
        try:
            async for data in ws:
                if not self._waiting:
                    raise TrackinError("protocol_error", "an answer nobody asked for")
                seq, future = self._waiting.popleft()
                self._slots.release()
                try:
                    future.set_result(_results(data, seq))
                except TrackinError as exc:
                    future.set_exception(exc)
        except (ConnectionClosed, TrackinError) as exc:
            error = exc
        self._failure = error if isinstance(error, TrackinError) else _closed(error or ws.close_reason)
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._failure)
            self._slots.release()


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
