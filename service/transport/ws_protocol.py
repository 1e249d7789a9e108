"""uvicorn's WebSocket protocol (the `websockets` sans-I/O one it picks by default), writing each event loop
iteration's frames in ONE socket write.

uvicorn writes every ASGI ``websocket.send`` to the socket at once: one ``send()`` system call per answer.
On loopback that call also runs the receiving side's TCP stack and wakes the reader, and it was the largest
single cost of a pipelined connection's answers (a third of the server's CPU per single-observation frame,
py-spy, docs/engine.md). Here the protocol's transport is wrapped so that writes made in one loop iteration
(a writer answering a run of frames from one engine batch) are joined and written once, at the end of the
iteration (``call_soon``): a lone answer waits for nothing but the rest of the current iteration. Every
byte still goes out in the order written (answers, pongs, the close frame), and ``close`` writes what is
buffered first. The transport's own flow control is untouched: ``pause_writing`` still comes from the real
transport when its buffer fills.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["CoalescingTransport", "CoalescingWebSocketsProtocol"]


_FLUSH_AT = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """A transport that joins the writes of one loop iteration into one write to ``inner``."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.inner = inner
        self._loop = loop
        self._out: list[bytes] = []
        self._buffered = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._out.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= _FLUSH_AT:  # a big or streamed answer: on to the socket (and its flow control)
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is buffered now (also called by ``close`` and ``write_eof``)."""
        self._scheduled = False
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._buffered = 0
        if not self.inner.is_closing():
            self.inner.write(data)

    def close(self) -> None:
        self.flush()
        self.inner.close()

    def abort(self) -> None:
        self._out.clear()
        self._buffered = 0
        self.inner.abort()

    def write_eof(self) -> None:
        self.flush()
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size() + self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class CoalescingWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol over a `CoalescingTransport` (``uvicorn.Config(ws=...)``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods
        self.transport = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
