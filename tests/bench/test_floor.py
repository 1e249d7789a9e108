"""The benchmark floor (bench/floor.py) answers as trackin's WebSocket does, on both of its protocol set-ups:
a real uvicorn process, driven by the benchmark's own lean client, one message after another and pipelined."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bench.http import serve
from bench.wsclient import LeanWebSocket, encode_frame


def _message(seq: int) -> tuple[bytes, list[dict[str, object]]]:
    observations = [
        {"stream": f"s{seq}-{k}", "x": [0.5] * (k + 1), "y": seq + k / 4} for k in range(seq % 3 + 1)
    ]
    frame = encode_frame(orjson.dumps({"seq": seq, "observations": observations}), binary=False)
    return frame, observations


async def _exchange(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    ws = await LeanWebSocket.connect(host, int(port))
    try:
        sent = [_message(seq) for seq in range(1, 41)]
        for frame, _ in sent[:20]:  # one at a time
            ws.writer.write(frame)
            _check(orjson.loads(await ws.receive()), sent)
        ws.writer.write(b"".join(frame for frame, _ in sent[20:]))  # pipelined: answered in order
        for _ in sent[20:]:
            _check(orjson.loads(await ws.receive()), sent)
    finally:
        await ws.close()


def _check(answer: dict[str, object], sent: list[tuple[bytes, list[dict[str, object]]]]) -> None:
    seq = answer["seq"]
    assert isinstance(seq, int)
    observations = sent[seq - 1][1]
    assert answer["results"] == [
        {"stream": o["stream"], "step": len(o["x"]), "prediction": 0.0, "loss": o["y"] ** 2, "applied": True}  # type: ignore[arg-type, operator]
        for o in observations
    ]


@pytest.mark.parametrize("one_write", [False, True], ids=["uvicorn-protocols", "trackin-protocols"])
def test_the_floor_answers_each_websocket_message_in_order(one_write: bool) -> None:
    with serve(floor=True, one_write=one_write) as floor:
        asyncio.run(asyncio.wait_for(_exchange(floor.url), timeout=30))
