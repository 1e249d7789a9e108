"""``/metrics`` on a port of its own, without API keys, for scrapers that cannot send one (Prometheus'
Kubernetes annotations): ``TRACKIN_METRICS_PORT``. Bind it where only the scraper reaches (a pod port no
Service exposes, a compose network port that is not published): it shows every tenant's stream figures.

A minimal HTTP/1.1 responder on the service's own event loop, so the metrics are read between engine
rounds exactly as the main port's ``/metrics`` reads them (a thread could see tables mid-change).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["serve_metrics"]

_TIMEOUT = 5.0
_MAX_HEADER_LINES = 100


async def serve_metrics(
    host: str, port: int, render: Callable[[], bytes], content_type: str
) -> asyncio.Server:
    """Start answering ``GET /metrics`` on ``host:port``; close the returned server to stop."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _TIMEOUT)
            for _ in range(_MAX_HEADER_LINES):
                if await asyncio.wait_for(reader.readline(), _TIMEOUT) in (b"\r\n", b"\n", b""):
                    break
            parts = request.split()
            found = (
                len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and parts[1].split(b"?")[0] == b"/metrics"
            )
            body = render() if found else b"not found: GET /metrics\n"
            head = (
                f"HTTP/1.1 {'200 OK' if found else '404 Not Found'}\r\n"
                f"Content-Type: {content_type if found else 'text/plain'}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if parts[:1] != [b"HEAD"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)
