"""service/transport/ws_protocol.py: the writes of one loop iteration reach the socket as one write, in
order, and ``close`` sends what is buffered before closing. Real sockets and event loop."""

from __future__ import annotations

import asyncio
import socket

from trackin.service.transport.ws_protocol import CoalescingTransport


async def _pair() -> tuple[CoalescingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return CoalescingTransport(transport, loop), peer


async def test_writes_of_one_iteration_go_out_together_in_order() -> None:
    transport, peer = await _pair()
    try:
        for chunk in (b"first ", b"second ", bytearray(b"third")):
            transport.write(chunk)
        assert transport.get_write_buffer_size() == len(b"first second third")
        try:
            early = peer.recv(4096)
        except BlockingIOError:
            early = b""
        assert early == b"", "nothing is written before the iteration ends"
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert peer.recv(4096) == b"first second third"
    finally:
        transport.close()
        peer.close()


async def test_close_sends_what_is_buffered_first() -> None:
    transport, peer = await _pair()
    transport.write(b"last answer")
    transport.close()
    peer.setblocking(True)
    peer.settimeout(5)
    received = b""
    while chunk := await asyncio.to_thread(peer.recv, 4096):
        received += chunk
    peer.close()
    assert received == b"last answer"
