"""The ``trackin`` command: ``serve`` runs the service, ``replay`` streams a file through it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import Settings

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "device": args.device,
            "data_dir": args.data_dir,
            "redis_url": args.redis_url,
            "store": args.store,
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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_ws_message_bytes + 1024,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        access_log=False,
    )
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trackin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket service (settings also from TRACKIN_* env)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--device", help="auto | cpu | cuda[:N]")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--redis-url")
    serve.add_argument("--store", choices=["auto", "sqlite", "redis", "memory"])
    serve.set_defaults(run=_serve)
    from .replay import add_parser as add_replay

    add_replay(sub)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
