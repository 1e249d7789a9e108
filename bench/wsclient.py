"""A lean asyncio WebSocket client for load: raw frames over one TCP connection, nothing per message but a
header and a write.

Frames are pre-encoded (client frames must be masked; the mask key is zero, so the payload goes as it is),
answers are cut out of whole socket reads and matched to requests in order (the server answers each
connection's messages in order). A pipelining sender writes every frame it may send now in one write, as a
producer with a backlog would; each frame is still its own message, answered on its own. The client costs
the shared cores a few microseconds per message (``bench.http`` prints it beside the server's); the
``websockets`` library, with its per-message objects and masking, costs tens.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence

__all__ = ["FrameBuffer", "LeanWebSocket", "encode_frame"]

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


class FrameBuffer:
    """Server frames cut out of the bytes read so far: ``feed`` a read, iterate the complete frames."""

    __slots__ = ("_data", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        if self._start:
            del self._data[: self._start]
            self._start = 0
        self._data += data

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(first byte, payload)`` of each complete frame (server frames are not masked)."""
        data, i = self._data, self._start
        end = len(data)
        while end - i >= 2:
            n, at = data[i + 1] & 0x7F, i + 2
            if n == 126:
                if end - at < 2:
                    break
                n, at = int.from_bytes(data[at : at + 2], "big"), at + 2
            elif n == 127:
                if end - at < 8:
                    break
                n, at = int.from_bytes(data[at : at + 8], "big"), at + 8
            if end - at < n:
                break
            first = data[i]
            i = at + n
            self._start = i
            yield first, bytes(data[at:i])


class LeanWebSocket:
    """One connection to ``ws://host:port/path``; ``await LeanWebSocket.connect(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = FrameBuffer()
        self._ready: deque[tuple[int, bytes]] = deque()

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

    async def _read_frames(self) -> None:
        """At least one more complete frame into ``_ready``, from as many bytes as one read gives."""
        while not self._ready:
            data = await self.reader.read(1 << 18)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._buffer.feed(data)
            self._ready.extend(self._buffer)

    def _message(self, first: int, payload: bytes) -> bytes | None:
        """A data frame's payload; ``None`` for a ping (answered); close and fragments are errors."""
        opcode = first & 0x0F
        if opcode == _PING:
            self.writer.write(encode_frame(payload, binary=True, opcode=_PONG))
            return None
        if opcode == _CLOSE:
            raise ConnectionError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
        if not first & 0x80:
            raise ConnectionError("fragmented messages are not handled by this client")
        return payload

    async def receive(self) -> bytes:
        """The next data message's payload (answers pings, refuses fragments and close)."""
        while True:
            if not self._ready:
                await self._read_frames()
            message = self._message(*self._ready.popleft())
            if message is not None:
                return message

    async def close(self) -> None:
        self.writer.write(encode_frame(b"\x03\xe8", binary=True, opcode=_CLOSE))
        self.writer.close()
        await self.writer.wait_closed()

    async def pipelined(
        self, frames: Sequence[bytes], seconds: float, window: int
    ) -> tuple[list[float], float, int]:
        """Send ``frames`` in a loop for ``seconds`` with up to ``window`` unanswered, each write carrying
        every frame the window allows then: per-message round trips, the elapsed time, and how many answers
        carried an error."""
        sent: deque[float] = deque()
        latencies: list[float] = []
        errors = 0
        credit = window
        more, queued = asyncio.Event(), asyncio.Event()
        started = time.perf_counter()
        stop = started + seconds
        sending = True

        async def writer() -> None:
            nonlocal credit, sending
            k = 0
            while (now := time.perf_counter()) < stop:
                if not credit:
                    more.clear()
                    await more.wait()
                    continue
                n, credit = credit, 0
                chunk = [frames[(k + i) % len(frames)] for i in range(n)]
                k = (k + n) % len(frames)
                sent.extend([now] * n)
                self.writer.write(b"".join(chunk))
                queued.set()
                if self.writer.transport.get_write_buffer_size() > 1 << 16:
                    await self.writer.drain()
            sending = False
            queued.set()

        async def reader() -> None:
            nonlocal credit, errors
            while True:
                if not sent:  # nothing unanswered: wait for the writer, or stop with it
                    if not sending:
                        return
                    queued.clear()
                    await queued.wait()
                    continue
                if not self._ready:
                    await self._read_frames()
                now = time.perf_counter()
                while self._ready:
                    answer = self._message(*self._ready.popleft())
                    if answer is None:
                        continue
                    latencies.append(now - sent.popleft())
                    if b"error" in answer[:64]:
                        errors += 1
                    credit += 1
                more.set()

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
