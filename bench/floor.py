"""The floor for single observations: bare FastAPI endpoints, uvicorn set up as ``trackin serve``.

Each does what any JSON endpoint must (route, read the body or message, parse it with orjson, answer a result
of the same shape as trackin's) and nothing else, so ``trackin / floor`` in ``python -m bench.http`` is the
share of the achievable request rate that trackin keeps, and the floor's latency under the same paced load
is what the machine itself adds to trackin's. REST: ``POST /v1/streams/{id}/observations``; WebSocket:
``/v1/ws``, messages ``{"seq": k, "observations": [{"stream", "x", "y"}, ...]}`` as trackin takes them.
The floor runs on uvicorn's HTTP protocol with trackin's deadlines, which writes an answer's head and body
in two socket writes, and on uvicorn's sans-I/O WebSocket protocol, which writes each answer on its own;
trackin's server joins them (``CoalescingHttpProtocol``, ``CoalescingWebSocketsProtocol``); ``--one-write``
gives the floor both too, so the bench shows both.

    .venv/bin/python -m bench.floor --port 8001
"""

from __future__ import annotations

import argparse
import sys

import orjson
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
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

    @app.websocket("/v1/ws")
    async def observe_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = orjson.loads(await websocket.receive_text())
                results = [
                    {
                        "stream": o["stream"],
                        "step": len(o["x"]),
                        "prediction": 0.0,
                        "loss": float(o["y"]) ** 2,
                        "applied": True,
                    }
                    for o in message["observations"]
                ]
                answer = orjson.dumps({"seq": message.get("seq"), "results": results})
                await websocket.send_text(answer.decode())
        except WebSocketDisconnect:
            return

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--one-write",
        action="store_true",
        help="trackin's protocols: an answer's head and body in one write; one write per loop iteration",
    )
    args = parser.parse_args(argv)
    # The settings trackin's cli passes (service/cli.py) with trackin's defaults: the same HTTP protocol (with
    # its header deadline), keep-alive and connection limit, WebSocket message bound and no per-message
    # deflate; shutdown settings do not matter.
    from trackin.service.connections import protocol_with_timeout
    from trackin.service.settings import Settings
    from trackin.service.transport.ws_protocol import CoalescingWebSocketsProtocol

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
        ws=CoalescingWebSocketsProtocol if args.one_write else "websockets-sansio",
        ws_max_size=settings.max_ws_message_bytes + 1024,
        ws_per_message_deflate=False,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
