"""The bytes of a WebSocket connection's messages read and not answered yet.

``max_ws_in_flight`` bounds how many messages a connection may have outstanding: enough for a pipelining
client of single observations to keep the engine batching. This bounds what those messages may weigh
(``max_ws_in_flight_bytes``), so a client pipelining big frames cannot make the server hold
``max_ws_in_flight`` of them: the reader waits for room before reading the next frame, and TCP
backpressure slows the client as it does at the message bound.
"""

from __future__ import annotations

import asyncio

__all__ = ["InFlightBytes"]


class InFlightBytes:
    """Bytes held for one connection: the reader `take`s a frame's size, the writer `give`s it back once
    the frame is answered; `room` waits while the held bytes reach the limit (one frame bigger than the
    limit still passes when nothing else is held)."""

    __slots__ = ("_room", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._room = asyncio.Event()
        self._room.set()

    def take(self, size: int) -> None:
        self.held += size
        if self.held >= self.limit:
            self._room.clear()

    def give(self, size: int) -> None:
        self.held -= size
        if self.held < self.limit:
            self._room.set()

    def full(self) -> bool:
        return not self._room.is_set()

    async def room(self) -> None:
        await self._room.wait()
