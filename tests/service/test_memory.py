"""Memory a client can make the server take: a per-stream cap, a total budget, and deletion giving it back.

Each test starts its own server (real uvicorn over a socket) with its own limits; RSS is read from /proc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service import LINEAR, assert_error, create, state_of, unique
from tests.support.server import Servers
from trackin.models.pool import slot_bytes
from trackin.models.specs import StreamSpec

pytestmark = pytest.mark.timeout(120)

MIB = 2**20


def mlp(width: int) -> dict[str, Any]:
    return {"model": {"family": "mlp", "in_dim": 4, "hidden": [width, width]}}


def rss(pid: int | None) -> int:
    """Resident bytes of the server process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def listed(http: httpx.Client, sid: str) -> bool:
    return sid in http.get("/v1/streams", params={"prefix": sid}).json()["streams"]


def test_a_spec_over_the_per_stream_cap_is_refused_before_anything_is_allocated(servers: Servers) -> None:
    server = servers.start({"TRACKIN_MAX_STREAM_BYTES": "32MiB"})
    huge = mlp(4096)  # 16.8M parameters: about 200 MB per stream with TrackIn's buffers
    before = rss(server.pid)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        sid = unique()
        refused = http.put(f"/v1/streams/{sid}", json=huge)
        assert_error(refused, 422, "stream_too_large", field="model", stream=sid)
        assert (
            "32" in refused.json()["error"]["message"] or "33,554,432" in refused.json()["error"]["message"]
        )
        assert not listed(http, sid)
        template = {"prefix": unique("cam"), "spec": huge, "idle_seconds": 60}
        assert_error(
            http.put("/v1/templates/big", json=template), 422, "stream_too_large", field="spec.model"
        )
        assert http.get("/v1/templates").json()["templates"] == []
    assert rss(server.pid) - before < 32 * MIB


def test_the_memory_budget_answers_507_and_keeps_what_exists(servers: Servers) -> None:
    width = 512  # about 3 MB per stream
    per_stream = slot_bytes(StreamSpec.model_validate(mlp(width)))
    server = servers.start({"TRACKIN_MEMORY_BUDGET": str(5 * per_stream)})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = []
        for _ in range(4):  # the pool doubles 1 -> 2 -> 4 slots: 4 streams' worth
            sid = unique()
            create(http, sid, mlp(width))
            made.append(sid)
        sid = unique()
        refused = http.put(f"/v1/streams/{sid}", json=mlp(width))  # doubling to 8 would take 8
        assert_error(refused, 507, "memory_budget", stream=sid)
        assert not listed(http, sid)
        # A replace that cannot fit leaves the old stream as it was.
        small = unique()
        create(http, small, LINEAR)
        assert http.post(f"/v1/streams/{small}/observations", json={"x": [1, 2, 3], "y": 1.0}).is_success
        kept = state_of(http, small, [1, 2, 3])
        replaced = http.put(f"/v1/streams/{small}", params={"replace": "true"}, json=mlp(1024))
        assert_error(replaced, 507, "memory_budget", stream=small)
        assert state_of(http, small, [1, 2, 3]) == kept
        # Deleting makes room again.
        assert http.delete(f"/v1/streams/{made[0]}").status_code == 204
        create(http, sid, mlp(width))


def test_deleting_streams_gives_their_memory_back(servers: Servers) -> None:
    server = servers.start()
    width = 1024  # about 12.6 MB per stream
    with httpx.Client(base_url=server.url, timeout=60) as http:
        warm = unique()  # one small stream and step first, so the baseline has torch's own warm-up
        create(http, warm, LINEAR)
        http.post(f"/v1/streams/{warm}/observations", json={"x": [1, 2, 3], "y": 1.0})
        before = rss(server.pid)
        sids = [unique() for _ in range(8)]
        for sid in sids:
            create(http, sid, mlp(width))
            ok = http.post(f"/v1/streams/{sid}/observations", json={"x": [1, 2, 3, 4], "y": [1.0]})
            assert ok.is_success, ok.text
        grown = rss(server.pid)
        assert grown - before > 80 * MIB
        for sid in sids:
            assert http.delete(f"/v1/streams/{sid}").status_code == 204
        after = rss(server.pid)
    assert after <= before * 1.10, (before, grown, after)
