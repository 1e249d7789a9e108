"""service/client.py and service/client_ws.py against a real ``trackin serve`` (the suite's shared server)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.server import TrackinServer
from trackin_client import AsyncTrackinClient, TrackinClient, TrackinError

LINEAR = {"model": {"family": "linear", "in_dim": 2}}
SERIES = {"model": {"family": "ar", "dim": 1, "lags": 2}}
_ids = itertools.count()


def fresh(name: str) -> str:
    """A stream id no other test uses on the shared server."""
    return f"client-{name}-{next(_ids)}"


@pytest.fixture
def client(server: TrackinServer) -> Iterator[TrackinClient]:
    with TrackinClient(server.url) as c:
        yield c


def test_create_streams_in_bulk(client: TrackinClient) -> None:
    ids = [fresh("bulkc") for _ in range(3)]
    assert client.create_streams(dict.fromkeys(ids, LINEAR)) == {"created": 3, "unchanged": 0}
    assert client.create_streams({ids[0]: LINEAR}) == {"created": 0, "unchanged": 1}
    with pytest.raises(TrackinError) as conflict:
        client.create_streams({ids[1]: SERIES, fresh("bulkc"): LINEAR})
    refused = conflict.value
    assert (refused.status, refused.code, refused.stream) == (409, "spec_conflict", ids[1])
    assert client.get_stream(ids[2])["spec"]["model"]["family"] == "linear"


def test_stream_lifecycle(client: TrackinClient) -> None:
    sid = fresh("life")
    assert client.create_stream(sid, LINEAR)["outcome"] == "created"
    assert client.create_stream(sid, LINEAR)["outcome"] == "unchanged"
    with pytest.raises(TrackinError) as conflict:
        client.create_stream(sid, {"model": {"family": "linear", "in_dim": 3}})
    assert (conflict.value.status, conflict.value.code, conflict.value.stream) == (409, "spec_conflict", sid)
    assert client.create_stream(sid, SERIES, replace=True)["outcome"] == "replaced"
    described = client.get_stream(sid)
    assert described["spec"]["model"]["family"] == "ar"
    assert described["figures"]["steps"] == 0
    client.delete_stream(sid)
    with pytest.raises(TrackinError) as gone:
        client.get_stream(sid)
    assert (gone.value.status, gone.value.code, gone.value.stream) == (404, "unknown_stream", sid)


def test_list_streams_follows_cursors(client: TrackinClient) -> None:
    prefix = fresh("list") + "-"
    ids = [f"{prefix}{i}" for i in range(5)]
    for sid in ids:
        client.create_stream(sid, LINEAR)
    assert list(client.list_streams(prefix, page_size=2)) == sorted(ids)


def test_observe_predict_label(client: TrackinClient) -> None:
    a, b = fresh("obs-a"), fresh("obs-b")
    client.create_stream(a, LINEAR)
    client.create_stream(b, SERIES)
    [first] = client.observe(a, {"x": [1.0, 2.0], "y": 3.0})
    assert (first["step"], first["prediction"], first["loss"]) == (1, 0.0, 9.0)  # zeros: predicted 0
    assert [r["step"] for r in client.observe(a, [{"x": [1.0, 0.0], "y": 1.0}] * 3)] == [2, 3, 4]
    mixed = client.observe_many(
        [{"stream": a, "x": [0.0, 1.0], "y": 2.0}, {"stream": b, "value": [5.0]}, {"stream": b, "value": 6.0}]
    )
    assert [r["stream"] for r in mixed] == [a, b, b]
    assert mixed[0]["step"] == 5
    assert mixed[1]["warming"]
    assert "forecast" in mixed[1]
    predicted = client.predict(a, [1.0, 1.0], request_id="r1")
    assert predicted["request_id"] == "r1"
    labelled = client.label(a, "r1", 2.0)
    assert labelled["step"] == 6
    assert labelled["prediction"] == pytest.approx(predicted["prediction"])


def test_errors_carry_the_servers_fields(client: TrackinClient) -> None:
    sid = fresh("err")
    client.create_stream(sid, LINEAR)
    with pytest.raises(TrackinError) as bad:
        client.observe_many(
            [{"stream": sid, "x": [1.0, 2.0], "y": 1.0}, {"stream": sid, "x": [1.0], "y": 1.0}]
        )
    error = bad.value
    assert (error.status, error.code, error.field, error.stream) == (
        422,
        "invalid_input",
        "observations[1].x",
        sid,
    )
    assert "expected 2 values" in error.message
    assert client.get_stream(sid)["figures"]["steps"] == 0  # the whole request was refused
    with pytest.raises(TrackinError) as unknown:
        client.observe(fresh("nobody"), {"value": [1.0]})
    assert unknown.value.status == 404


def test_batcher_sends_full_batches_and_the_rest_on_exit(client: TrackinClient) -> None:
    sid = fresh("batch")
    client.create_stream(sid, LINEAR)
    sent: list[int] = []
    with client.batcher(size=3) as batch:
        for i in range(7):
            results = batch.add({"stream": sid, "x": [i / 7, 1.0], "y": 0.5})
            sent.append(len(results))
        assert len(batch) == 1
    assert sent == [0, 0, 3, 0, 0, 3, 0]
    assert client.get_stream(sid)["figures"]["steps"] == 7


def test_batcher_time_limit(client: TrackinClient) -> None:
    sid = fresh("late")
    client.create_stream(sid, LINEAR)
    batch = client.batcher(size=100, max_delay=0.05)
    assert batch.add({"stream": sid, "x": [1.0, 1.0], "y": 1.0}) == []
    time.sleep(0.06)
    assert [r["step"] for r in batch.add({"stream": sid, "x": [1.0, 1.0], "y": 1.0})] == [1, 2]
    with pytest.raises(ValueError, match="Invalid batch size"):
        client.batcher(size=0)


@pytest.mark.parametrize("binary", [True, False])
def test_ws_session_pipelines_in_order(client: TrackinClient, binary: bool) -> None:
    sid = fresh("ws")
    client.create_stream(sid, LINEAR)
    messages = [[{"stream": sid, "x": [1.0, (i % 3) / 3], "y": 1.0}] for i in range(40)]
    with client.ws(max_in_flight=4, binary=binary) as ws:
        steps = [results[0]["step"] for results in ws.stream(messages)]
        assert steps == list(range(1, 41))
        with pytest.raises(TrackinError) as bad:
            ws.send([{"stream": sid, "x": [1.0], "y": 1.0}])
        assert (bad.value.status, bad.value.field, bad.value.stream) == (None, "observations[0].x", sid)
        assert ws.send([{"stream": sid, "x": [1.0, 1.0], "y": 1.0}])[0]["step"] == 41  # still open


async def test_async_client_and_timed_batcher(server: TrackinServer) -> None:
    async with AsyncTrackinClient(server.url) as client:
        sid = fresh("async")
        assert (await client.create_stream(sid, LINEAR))["outcome"] == "created"
        [result] = await client.observe(sid, {"x": [1.0, 1.0], "y": 1.0})
        assert result["step"] == 1
        assert [s async for s in client.list_streams(sid)] == [sid]
        async with client.batcher(size=4, max_delay=0.05) as batch:
            futures = [await batch.add({"stream": sid, "x": [1.0, 0.0], "y": 1.0}) for _ in range(6)]
            first_four = await asyncio.gather(*futures[:4])  # sent when the 4th arrived
            rest = await asyncio.wait_for(asyncio.gather(*futures[4:]), 10)  # sent by the timer
        assert [r["step"] for r in [*first_four, *rest]] == [2, 3, 4, 5, 6, 7]
        with pytest.raises(TrackinError) as bad:
            await client.observe(sid, {"value": [1.0]})
        assert bad.value.status == 422
        await client.delete_stream(sid)


async def test_async_ws_concurrent_senders_keep_submission_order(server: TrackinServer) -> None:
    async with AsyncTrackinClient(server.url) as client:
        sid = fresh("aws")
        await client.create_stream(sid, SERIES)

        async def messages() -> AsyncIterator[list[dict[str, object]]]:
            for i in range(30):
                yield [{"stream": sid, "value": [float(i)]}]

        async with client.ws(max_in_flight=3) as ws:
            streamed = [results[0]["step"] async for results in ws.stream(messages())]
            concurrent = await asyncio.gather(
                *(ws.send([{"stream": sid, "value": [float(i)]}]) for i in range(20))
            )
            with pytest.raises(TrackinError) as bad:
                await ws.send([{"stream": fresh("none"), "value": [1.0]}])
            assert bad.value.code == "unknown_stream"
        warmup = 1  # the first value has no forecast to score (the default, scale-free path)
        assert streamed == [0] * warmup + list(range(1, 31 - warmup))
        assert [r[0]["step"] for r in concurrent] == list(range(31 - warmup, 51 - warmup))
