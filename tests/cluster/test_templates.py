"""Templates and late labels in cluster mode: a template made through one replica creates streams through
any other (rows, many streams, columns), a label goes through any replica, and after the owner is killed
its successor replays exactly what it applied, even with the template replaced meanwhile; equal to a
single node fed the same observations."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.cluster import SPEC, Cluster, Load, check_against_reference, partition

pytestmark = pytest.mark.slow


def test_templates_and_labels_through_any_replica_and_a_failover(cluster: Cluster) -> None:
    urls = [r.url for r in cluster.live()]
    rng = random.Random(21)
    template = {"prefix": "tpl-", "spec": SPEC, "idle_seconds": 600}
    streams = [f"tpl-{i}" for i in range(16)]
    load = Load(streams, seed=21, headers=cluster.headers)
    with httpx.Client(timeout=30, headers=cluster.headers) as http:
        made = http.put(f"{urls[0]}/v1/templates/tp", json=template)
        assert made.status_code == 201, made.text
        assert made.json()["outcome"] == "created"
        again = http.put(
            f"{urls[1 % len(urls)]}/v1/templates/tp", json=template
        )  # decided on the bucket, not a mirror
        assert (again.status_code, again.json()["outcome"]) == (200, "unchanged")
        for url in urls:  # a listing returns once that replica's mirror holds every template
            listed = http.get(f"{url}/v1/templates").json()["templates"]
            assert [(t["name"], t["prefix"]) for t in listed] == [("tp", "tpl-")]
        bad = http.put(
            f"{urls[-1]}/v1/templates/tp2", json={"prefix": "x-", "spec": {"model": {"family": "nope"}}}
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["field"].startswith("spec"), bad.text
        # Unknown streams under the prefix come into being on their first observation, through any replica:
        # one stream's rows, many streams' rows, columns.
        for stream in streams[:6]:
            obs = load.observation()
            answer = http.post(f"{rng.choice(urls)}/v1/streams/{stream}/observations", json=obs)
            assert answer.status_code == 200, answer.text
            _ack(load, stream, obs, answer.json()["results"][0])
        items = [{"stream": s, **load.observation()} for s in streams[4:11]]
        answer = http.post(f"{rng.choice(urls)}/v1/observations", json={"observations": items})
        assert answer.status_code == 200, answer.text
        for item, result in zip(items, answer.json()["results"], strict=True):
            _ack(load, item["stream"], {"x": item["x"], "y": item["y"]}, result)
        named = streams[9:]
        rows = [load.observation() for _ in named]
        body = {"streams": named, "x": [r["x"] for r in rows], "y": [r["y"] for r in rows]}
        answer = http.post(f"{rng.choice(urls)}/v1/observations", json=body)
        assert answer.status_code == 200, answer.text
        columns = answer.json()
        for i, (stream, row) in enumerate(zip(named, rows, strict=True)):
            _ack(load, stream, row, {"step": columns["step"][i], "prediction": columns["prediction"][i]})
        assert http.get(f"{urls[0]}/v1/streams/{streams[0]}").json()["template"] == "tp"
        # Reads never create: an unknown stream under the prefix stays unknown.
        assert http.get(f"{urls[1 % len(urls)]}/v1/streams/tpl-never").status_code == 404
        # A late label, through another replica than its prediction: the step single-node applies.
        x = [0.25, -0.5, 0.75]
        predicted = http.post(f"{urls[0]}/v1/streams/{streams[0]}/predict", json={"x": x, "request_id": "r1"})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["request_id"] == "r1"
        labelled = http.post(
            f"{urls[1 % len(urls)]}/v1/streams/{streams[0]}/labels", json={"request_id": "r1", "y": 0.5}
        )
        assert labelled.status_code == 200, labelled.text
        assert labelled.json()["request_id"] == "r1"
        _ack(load, streams[0], {"x": x, "y": 0.5}, labelled.json())
        again = http.post(f"{urls[-1]}/v1/streams/{streams[0]}/labels", json={"request_id": "r1", "y": 0.5})
        assert again.status_code == 404, again.text  # applied once: its inputs are gone
        assert again.json()["error"]["field"] == "request_id"
        # A deleted stream's waiting predictions go with it: none steps the stream made again under its id.
        gone, first = "tpl-gone", {"x": x, "y": 1.0}
        assert http.post(f"{urls[0]}/v1/streams/{gone}/observations", json=first).status_code == 200
        assert (
            http.post(f"{urls[-1]}/v1/streams/{gone}/predict", json={"x": x, "request_id": "r3"}).status_code
            == 200
        )
        assert http.delete(f"{urls[0]}/v1/streams/{gone}").status_code == 204
        assert http.post(f"{urls[-1]}/v1/streams/{gone}/observations", json=first).status_code == 200
        stale = http.post(f"{urls[0]}/v1/streams/{gone}/labels", json={"request_id": "r3", "y": 0.0})
        assert stale.status_code == 404, stale.text
        # A prediction waiting for its label when its stream's owner dies.
        victim = next(r for r in cluster.live() if partition(streams[1]) in cluster.owned_by(r))
        kept = http.post(f"{urls[0]}/v1/streams/{streams[1]}/predict", json={"x": x, "request_id": "r2"})
        assert kept.status_code == 200, kept.text
        # The template replaced (another spec under the prefix) and the owner of the first streams killed:
        # its successor restores and replays what it applied, with the streams' own specs.
        replaced = http.put(
            f"{urls[0]}/v1/templates/tp",
            json={**template, "spec": {"model": {"family": "linear", "in_dim": 2}}},
        )
        assert replaced.json()["outcome"] == "replaced"
        for url in urls:
            http.get(f"{url}/v1/templates")
        victim.kill()
        cluster.wait_ready(timeout=60)
        survivors = [r.url for r in cluster.live()]
        labelled = http.post(
            f"{survivors[0]}/v1/streams/{streams[1]}/labels", json={"request_id": "r2", "y": -1.0}
        )
        assert labelled.status_code == 200, labelled.text
        _ack(load, streams[1], {"x": x, "y": -1.0}, labelled.json())
        fresh = http.post(f"{survivors[-1]}/v1/streams/tpl-new/observations", json={"x": [1, 2], "y": 3})
        assert fresh.status_code == 200, fresh.text  # made from the template in force now
        assert http.delete(f"{survivors[0]}/v1/templates/tp").status_code == 204
        assert http.delete(f"{survivors[-1]}/v1/templates/tp").status_code == 404
        assert http.get(f"{survivors[-1]}/v1/templates").json()["templates"] == []
    check_against_reference(cluster, load)
    cluster.add()  # three healthy replicas for the next tests
    cluster.wait_ready(timeout=60)


def _ack(load: Load, stream: str, obs: dict[str, object], result: dict[str, object]) -> None:
    log = load.logs[stream]
    log.answers.append((len(log.acked), result))
    log.acked.append(obs)
