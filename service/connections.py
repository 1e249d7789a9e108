"""Connections that never finish a request's headers or body are closed, so silent and slowloris sockets
cannot hold the server's file descriptors.

uvicorn times out idle keep-alive connections only after a response; a socket that connects and then sends
nothing, sends its headers a byte at a time, or announces a body and trickles it, is kept for ever.
:class:`HeaderTimeoutProtocol` gives every request ``header_timeout`` seconds from its first byte (or from the
connection, for the first request) to complete its headers, then ``body_timeout`` seconds to complete its
body; after either the connection is closed and a warning logged. A WebSocket upgrade leaves the deadlines
behind (the WebSocket protocol has its own pings).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trackin.service.transport.ws_protocol import CoalescingTransport

__all__ = [
    "CoalescingHttpProtocol",
    "HeaderTimeoutProtocol",
    "protocol_with_timeout",
    "raise_open_files_limit",
]

log = logging.getLogger("trackin")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving a request's headers."""

    header_timeout = 10.0  # set per server by :func:`protocol_with_timeout`
    body_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float | None = None, what: str = "request headers") -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(
            self.header_timeout if seconds is None else seconds, self._too_slow, what
        )

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self, what: str) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
            seconds = self.header_timeout if what == "request headers" else self.body_timeout
            log.warning("closing %s: no complete %s within %.1f s", client, what, seconds)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, "request body")  # disarmed when the body is complete
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()


class CoalescingHttpProtocol(HeaderTimeoutProtocol):
    """`HeaderTimeoutProtocol` writing each loop iteration's bytes in one socket write.

    uvicorn writes an answer's head at ``http.response.start`` and its body at ``http.response.body``: two
    ``send()`` system calls, two TCP segments, and on loopback the receiving side's TCP stack run twice, for
    every answer. That pair was the largest single cost of a single-observation request after the engine
    round (py-spy, docs/engine.md). Over a `CoalescingTransport` (service/transport/ws_protocol.py) the head
    and the body go out in one write at the end of the loop iteration; ``close`` writes what is buffered
    first, and an answer of 64 KiB or more is written at once. A WebSocket upgrade hands the real transport
    on (the WebSocket protocol joins its own writes)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)

    def handle_websocket_upgrade(self) -> None:
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()
            self.transport = self.transport.inner
        super().handle_websocket_upgrade()


def protocol_with_timeout(
    seconds: float, body_seconds: float = 10.0, *, coalesce: bool = False
) -> type[HeaderTimeoutProtocol]:
    """The protocol class for one server (uvicorn instantiates it per connection); ``coalesce``: one socket
    write per answer (`CoalescingHttpProtocol`)."""
    deadlines = {"header_timeout": seconds, "body_timeout": body_seconds}
    base = CoalescingHttpProtocol if coalesce else HeaderTimeoutProtocol
    return type(base.__name__, (base,), deadlines)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (1,024 sockets are few for a server); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
