"""``trackin serve``: run the service with uvicorn, draining what was accepted on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from trackin.service.app import create_app
    from trackin.service.connections import protocol_with_timeout, raise_open_files_limit
    from trackin.service.settings import Settings
    from trackin.service.transport.ws_protocol import CoalescingWebSocketsProtocol

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "device": args.device,
            "data_dir": args.data_dir,
            "redis_url": args.redis_url,
            "store": args.store,
            "insecure": True if args.insecure else None,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn handles SIGTERM (stop accepting, finish what was accepted), then restores the handler found
    # here and raises the signal again: exit 0 then, as a graceful stop, not death by signal (-15).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_ws_message_bytes + 1024,
        # Answers are small and numeric: per-message deflate (which clients such as `websockets` offer by
        # default) costs more CPU per frame than it saves on loopback or a LAN.
        ws_per_message_deflate=False,
        ws=CoalescingWebSocketsProtocol,  # one socket write per loop iteration, not per answer
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        access_log=False,
        # header and body deadlines; each answer's head and body in one socket write
        http=protocol_with_timeout(
            settings.header_timeout_seconds, settings.body_timeout_seconds, coalesce=True
        ),
        timeout_keep_alive=int(settings.keep_alive_seconds),
        limit_concurrency=settings.max_connections,
    )
    raise_open_files_limit()
    server = _graceful_server(app, settings.shutdown_timeout_seconds)(config)
    server.run()
    return 0 if server.started else 3  # as uvicorn.run: 3 when startup failed (e.g. port taken)


def _graceful_server(app: Any, timeout: float) -> type[uvicorn.Server]:
    import uvicorn

    from trackin.service.transport.ws import close_websockets

    class GracefulServer(uvicorn.Server):
        """uvicorn's shutdown closes WebSockets at once (1012), losing answers to messages already
        accepted. First stop accepting, then let every connection answer what it accepted and close."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for listener in self.servers:
                listener.close()
            state = getattr(app.state, "trackin", None)
            if state is not None:
                await close_websockets(state, timeout)
            await super().shutdown(sockets)

    return GracefulServer


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def add_parser(commands: Any) -> None:
    """Register ``serve`` on the ``trackin`` command's subparsers."""
    serve = commands.add_parser(
        "serve", help="run the HTTP/WebSocket service (settings also from TRACKIN_* env)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--device", help="auto | cpu | cuda[:N]")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--redis-url")
    serve.add_argument("--store", choices=["auto", "sqlite", "redis", "memory"])
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve without API keys on an address other than 127.0.0.1 (refused otherwise)",
    )
    serve.set_defaults(run=_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m trackin.service.cli serve``: the server alone (the ``trackin`` command is trackin.cli)."""
    parser = argparse.ArgumentParser(prog="trackin", description=__doc__)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
