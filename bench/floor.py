"""The floor for single-observation REST: a bare FastAPI endpoint, uvicorn set up as ``trackin serve``.

It does what any JSON endpoint must (route, read the body, parse it with orjson, answer a result of the same
shape as trackin's) and nothing else, so ``trackin / floor`` in ``python -m bench.http`` is the share of the
achievable request rate that trackin keeps. The floor runs on uvicorn's HTTP protocol with trackin's
deadlines, which writes an answer's head and body in two socket writes; trackin's server joins them
(``CoalescingHttpProtocol``); ``--one-write`` gives the floor that too, so the bench shows both.

    .venv/bin/python -m bench.floor --port 8001
"""

from __future__ import annotations

import argparse
import sys

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

__all__ = ["create_floor", "main"]


def create_floor() -> FastAPI:
    app = FastAPI(title="floor")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    @app.post("/v1/streams/{stream_id}/observations")
    async def observe(stream_id: str, request: Request) -> Response:
        body = orjson.loads(await request.body())
        x = body["x"]
        result = {"step": len(x), "prediction": 0.0, "loss": float(body["y"]) ** 2, "applied": True}
        return Response(orjson.dumps({"results": [result]}), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--one-write",
        action="store_true",
        help="trackin's protocol that writes an answer's head and body at once",
    )
    args = parser.parse_args(argv)
    # The settings trackin's cli passes (service/cli.py) with trackin's defaults: the same HTTP protocol (with
    # its header deadline), keep-alive and connection limit; WebSocket and shutdown settings do not matter.
    from trackin.service.connections import protocol_with_timeout
    from trackin.service.settings import Settings

    settings = Settings()
    config = uvicorn.Config(
        create_floor(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=protocol_with_timeout(
            settings.header_timeout_seconds, settings.body_timeout_seconds, coalesce=args.one_write
        ),
        timeout_keep_alive=int(settings.keep_alive_seconds),
        limit_concurrency=settings.max_connections,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
