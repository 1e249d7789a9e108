"""A lean asyncio WebSocket client for load: raw frames over one TCP connection, nothing per message but a
header and a write.

Frames are pre-encoded (client frames must be masked; the mask key is zero, so the payload goes as it is),
answers are read frame by frame and matched to requests in order (the server answers each connection's
messages in order). The client costs the shared cores a few microseconds per message; the ``websockets``
library, with its per-message objects and masking, costs tens.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Sequence

__all__ = ["LeanWebSocket", "encode_frame"]

_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def encode_frame(payload: bytes, *, binary: bool, opcode: int | None = None) -> bytes:
    """One final, masked (with a zero key) client frame."""
    op = 0x80 | (opcode if opcode is not None else (_BINARY if binary else _TEXT))
    n = len(payload)
    if n < 126:
        head = bytes((op, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((op, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((op, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class LeanWebSocket:
    """One connection to ``ws://host:port/path``; ``await LeanWebSocket.connect(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/v1/ws") -> LeanWebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"no WebSocket upgrade: {head[:200]!r}")
        return cls(reader, writer)

    async def receive(self) -> bytes:
        """The next data message's payload (answers pings, refuses fragments and close)."""
        while True:
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(n)
            opcode = first & 0x0F
            if opcode == _PING:
                self.writer.write(encode_frame(payload, binary=True, opcode=_PONG))
                continue
            if opcode == _CLOSE:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            if not first & 0x80:
                raise ConnectionError("fragmented messages are not handled by this client")
            return payload

    async def close(self) -> None:
        self.writer.write(encode_frame(b"\x03\xe8", binary=True, opcode=_CLOSE))
        self.writer.close()
        await self.writer.wait_closed()

    async def pipelined(
        self, frames: Sequence[bytes], seconds: float, window: int
    ) -> tuple[list[float], float, int]:
        """Send ``frames`` in a loop for ``seconds`` with up to ``window`` unanswered: per-message round
        trips, the elapsed time, and how many answers carried an error."""
        sent: asyncio.Queue[float] = asyncio.Queue()
        gate = asyncio.Semaphore(window)
        latencies: list[float] = []
        errors = 0
        started = time.perf_counter()
        stop = started + seconds
        count = 0

        async def writer() -> None:
            nonlocal count
            k = 0
            while time.perf_counter() < stop:
                await gate.acquire()
                sent.put_nowait(time.perf_counter())
                self.writer.write(frames[k])
                k = (k + 1) % len(frames)
                count += 1
                if self.writer.transport.get_write_buffer_size() > 1 << 16:
                    await self.writer.drain()
            sent.put_nowait(-1.0)

        async def reader() -> None:
            nonlocal errors
            while True:
                t0 = await sent.get()
                if t0 < 0:
                    return
                answer = await self.receive()
                latencies.append(time.perf_counter() - t0)
                if b"error" in answer[:64]:
                    errors += 1
                gate.release()

        await asyncio.gather(writer(), reader())
        return latencies, time.perf_counter() - started, errors

    async def paced(
        self, frames: Sequence[bytes], seconds: float, rate: float
    ) -> tuple[list[float], float, int]:
        """One message every ``1 / rate`` s for ``seconds``: per-message round trips, elapsed, errors."""
        sent: asyncio.Queue[float] = asyncio.Queue()
        latencies: list[float] = []
        errors = 0
        started = time.perf_counter()

        async def writer() -> None:
            k = 0
            while (due := started + k / rate) < started + seconds:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.put_nowait(time.perf_counter())
                self.writer.write(frames[k % len(frames)])
                k += 1
            sent.put_nowait(-1.0)

        async def reader() -> None:
            nonlocal errors
            while (t0 := await sent.get()) >= 0:
                answer = await self.receive()
                latencies.append(time.perf_counter() - t0)
                errors += b"error" in answer[:64]

        await asyncio.gather(writer(), reader())
        return latencies, time.perf_counter() - started, errors
