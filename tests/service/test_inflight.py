"""The byte bound of a WebSocket connection's messages in flight (service/transport/inflight.py): the reader
waits for room while the held bytes reach the limit and goes on as soon as answers give them back; one frame
bigger than the limit still passes alone. (The bound end to end, over a socket:
tests/service/test_websocket.py, ``test_backpressure_stops_reading_and_loses_nothing[bytes]``.)"""

from __future__ import annotations

import asyncio

from trackin.service.transport.inflight import InFlightBytes


async def _waits(held: InFlightBytes) -> bool:
    """Whether the reader would wait for room now (it is not let through within a few loop steps)."""
    reader = asyncio.ensure_future(held.room())
    for _ in range(5):
        await asyncio.sleep(0)
    waiting = not reader.done()
    reader.cancel()
    return waiting


async def test_the_reader_waits_at_the_limit_and_goes_on_when_answers_give_bytes_back() -> None:
    held = InFlightBytes(1000)
    assert not await _waits(held)
    held.take(600)
    assert not await _waits(held)  # 600 of 1000: another frame may be read
    held.take(600)
    assert await _waits(held)  # 1200: no more until answers go out
    reader = asyncio.ensure_future(held.room())
    await asyncio.sleep(0)
    held.give(600)  # the first frame answered: 600 held, room again
    await asyncio.wait_for(reader, timeout=1)
    held.give(600)
    assert held.held == 0
    assert not await _waits(held)


async def test_one_frame_over_the_limit_passes_alone_then_holds_the_reader() -> None:
    held = InFlightBytes(1024)
    assert not await _waits(held)  # nothing held: the reader may read a frame of any allowed size
    held.take(4096)
    assert await _waits(held)
    held.give(4096)
    assert not await _waits(held)
