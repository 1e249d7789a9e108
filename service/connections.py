"""Connections that never finish their request headers are closed, so silent and slowloris sockets cannot
hold the server's file descriptors.

uvicorn times out idle keep-alive connections only after a response; a socket that connects and then sends
nothing, or sends its headers a byte at a time, is kept for ever. :class:`HeaderTimeoutProtocol` gives every
request ``header_timeout`` seconds from its first byte (or from the connection, for the first request) to
complete its headers; after that the connection is closed and a warning logged.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderTimeoutProtocol", "protocol_with_timeout", "raise_open_files_limit"]

log = logging.getLogger("trackin")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving a request's headers."""

    header_timeout = 10.0  # set per server by :func:`protocol_with_timeout`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
            log.warning("closing %s: no complete request headers within %.1f s", client, self.header_timeout)
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
        self._disarm()
        super().on_headers_complete()


def protocol_with_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for one server (uvicorn instantiates it per connection)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


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
