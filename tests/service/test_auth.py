"""Authentication, scopes and namespaces on a real ``trackin serve`` (SQLite store, keys made by the CLI).

The matrix: tenant alpha's key (every scope) against every operation on tenant beta's streams and templates
gets 404 or 403 (or acts on alpha's own namespace), and beta's state, read before and after, is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.service import LINEAR, check_error_body
from tests.service.conftest import SHARED_ENV
from tests.support.ports import free_port
from tests.support.server import TrackinServer
from trackin.cli import main
from trackin_client import TrackinClient, TrackinError

ADMIN = "admin-secret-" + "0" * 32
ORIGIN = "https://ok.example"


def make_key(data_dir: Path, tenant: str, scopes: str) -> str:
    with contextlib.redirect_stdout(out := io.StringIO()):
        assert main(["keys", "--data-dir", str(data_dir), "--store", "sqlite", "create", "--tenant", tenant,
                     "--scopes", scopes]) == 0  # fmt: skip
    return out.getvalue().strip()


class Keys:
    def __init__(self, data_dir: Path) -> None:
        self.alpha = make_key(data_dir, "alpha", "ingest,read,admin")
        self.beta = make_key(data_dir, "beta", "ingest,read,admin")
        self.reader = make_key(data_dir, "alpha", "read")
        self.ingester = make_key(data_dir, "alpha", "ingest")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrackinServer, Keys]]:
    data_dir = tmp_path_factory.mktemp("secured")
    made = Keys(data_dir)
    env = {
        **SHARED_ENV,
        "TRACKIN_BOOTSTRAP_ADMIN_KEY": ADMIN,
        "TRACKIN_KEY_REFRESH_SECONDS": "0.2",
        "TRACKIN_ALLOWED_ORIGINS": f'["{ORIGIN}"]',
        "TRACKIN_METRICS_PORT": str(free_port()),
    }
    with TrackinServer(data_dir, env=env, store="sqlite") as server:
        yield server, made


def client(server: TrackinServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def test_missing_or_bad_keys_get_401(secured: tuple[TrackinServer, Keys]) -> None:
    server, made = secured
    key_id = made.alpha.split("_")[1]
    wrong_secret = f"trk_{key_id}_{'A' * 43}"
    for key in (None, "bogus", wrong_secret, made.alpha + "x"):
        with client(server, key) as http:
            for method, path in [("GET", "/v1/streams"), ("POST", "/v1/streams/s/observations"),
                                 ("POST", "/v1/observations"), ("PUT", "/v1/templates/t")]:  # fmt: skip
                response = http.request(method, path, json={"x": [1, 2, 3], "y": 1})
                assert response.status_code == 401, (key, method, path, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                check_error_body(response.json(), "unauthorized")
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/streams", headers={"Authorization": f"Basic {made.alpha}"}).status_code == 401
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200


def test_each_scope_allows_its_operations_only(secured: tuple[TrackinServer, Keys]) -> None:
    server, made = secured
    with client(server, made.alpha) as admin:
        assert admin.put("/v1/streams/scoped", json=LINEAR).status_code in (200, 201)
    observation = {"x": [0.1, 0.2, 0.3], "y": 1.0}
    with client(server, made.reader) as reader:
        assert reader.get("/v1/streams").json()["streams"] == ["scoped"]
        assert reader.get("/v1/streams/scoped").status_code == 200
        assert reader.post("/v1/streams/scoped/predict", json={"x": [0.1, 0.2, 0.3]}).status_code == 200
        for method, path, body in [
            ("POST", "/v1/streams/scoped/observations", observation),
            ("POST", "/v1/observations", {"observations": [{"stream": "scoped", **observation}]}),
            ("POST", "/v1/streams/scoped/labels", {"request_id": "r", "y": 1.0}),
            ("PUT", "/v1/streams/scoped?replace=true", LINEAR),
            ("DELETE", "/v1/streams/scoped", None),
            ("PUT", "/v1/templates/t", {"prefix": "p", "spec": LINEAR}),
            ("DELETE", "/v1/templates/t", None),
            ("GET", "/metrics", None),
        ]:
            response = reader.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            check_error_body(response.json(), "forbidden")
    with client(server, made.ingester) as ingester:
        assert ingester.post("/v1/streams/scoped/observations", json=observation).status_code == 200
        assert ingester.get("/v1/streams/scoped").status_code == 403
        assert ingester.post("/v1/streams/scoped/predict", json={"x": [0.1, 0.2, 0.3]}).status_code == 403
        assert ingester.put("/v1/streams/other", json=LINEAR).status_code == 403
    with client(server, made.alpha) as tenant_admin, client(server, ADMIN) as operator:
        assert tenant_admin.get("/metrics").status_code == 403  # every tenant's figures: the operator's
        assert operator.get("/metrics").status_code == 200
        assert tenant_admin.delete("/v1/streams/scoped").status_code == 204


def test_a_revoked_key_stops_working_within_a_refresh(secured: tuple[TrackinServer, Keys]) -> None:
    server, _ = secured
    key = make_key(server.data_dir, "gamma", "read")
    with client(server, key) as http:
        assert _eventually(lambda: http.get("/v1/streams").status_code) == 200  # seen within a refresh
        assert main(["keys", "--data-dir", str(server.data_dir), "revoke", key.split("_")[1]]) == 0
        assert _eventually(lambda: http.get("/v1/streams").status_code, until=401) == 401


def _eventually(probe: Any, until: int = 200, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got: int = probe()
        if got == until or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


async def test_websocket_authenticates_at_the_handshake(secured: tuple[TrackinServer, Keys]) -> None:
    server, made = secured
    with client(server, made.alpha) as http:
        assert http.put("/v1/streams/ws-s", json=LINEAR).status_code in (200, 201)
    message = '{"seq": 1, "observations": [{"stream": "ws-s", "x": [0.1, 0.2, 0.3], "y": 1.0}]}'
    header = {"Authorization": f"Bearer {made.alpha}"}
    async with connect(server.ws_url, additional_headers=header, open_timeout=10) as ws:
        await ws.send(message)
        assert '"stream":"ws-s"' in str(await asyncio.wait_for(ws.recv(), 10))
    offered = f"trackin.bearer.{made.alpha}"
    async with connect(server.ws_url, subprotocols=[offered], origin=ORIGIN, open_timeout=10) as ws:
        assert ws.subprotocol == offered
        await ws.send(message)
        assert '"results"' in str(await asyncio.wait_for(ws.recv(), 10))
    refusals: list[tuple[dict[str, Any], int]] = [
        ({}, 401),
        ({"additional_headers": {"Authorization": "Bearer bogus"}}, 401),
        ({"additional_headers": {"Authorization": f"Bearer {made.reader}"}}, 403),
        ({"additional_headers": header, "origin": "https://evil.example"}, 403),
    ]
    for kwargs, status in refusals:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url, open_timeout=10, **kwargs):
                pass
        assert refused.value.response.status_code == status, kwargs


def test_a_tenant_cannot_reach_another_tenants_streams_or_templates(
    secured: tuple[TrackinServer, Keys],
) -> None:
    server, made = secured
    observation = {"x": [0.1, 0.2, 0.3], "y": 1.0}
    with client(server, made.beta) as beta:
        assert beta.put("/v1/streams/b-1", json=LINEAR).status_code == 201
        assert beta.put("/v1/templates/bt", json={"prefix": "b-", "spec": LINEAR}).status_code == 201
        assert beta.post("/v1/streams/b-1/observations", json=observation).status_code == 200
        assert beta.post(
            "/v1/streams/b-1/predict", json={"x": [0.1, 0.2, 0.3], "request_id": "r1"}
        ).is_success
        for bad, field in (({"x": [0.1]}, "x"), ({"x": "no"}, "x"), ({}, "x")):
            refused = beta.post("/v1/streams/b-1/predict", json=bad)  # errors name the tenant's own id
            assert refused.status_code == 422, refused.text
            assert (refused.json()["error"]["stream"], refused.json()["error"]["field"]) == ("b-1", field)
            assert "beta" not in refused.text
        unknown = beta.post("/v1/streams/b-9/predict", json={"x": [0.1, 0.2, 0.3]})
        assert (unknown.status_code, unknown.json()["error"]["stream"]) == (404, "b-9"), unknown.text
        assert "beta" not in unknown.text

        def snapshot() -> list[Any]:
            return [
                beta.get("/v1/streams/b-1").json(),
                beta.get("/v1/streams").json(),
                beta.get("/v1/templates").json(),
                beta.get("/v1/streams/b-2").status_code,  # the template's prefix: not created by others
            ]

        before = snapshot()
    assert before[1] == {"streams": ["b-1"], "next_cursor": None}
    assert [t["name"] for t in before[2]["templates"]] == ["bt"]
    assert before[3] == 404
    escapes = ["~beta/b-1", "~beta%2Fb-1", "..%2F~beta%2Fb-1"]
    for key in (made.alpha, ADMIN):
        with client(server, key) as other:
            for method, path, body in [
                ("GET", "/v1/streams/b-1", None),
                ("DELETE", "/v1/streams/b-1", None),
                ("POST", "/v1/streams/b-1/observations", observation),
                ("POST", "/v1/streams/b-2/observations", observation),  # beta's template
                ("POST", "/v1/streams/b-1/predict", {"x": [0.1, 0.2, 0.3]}),
                ("POST", "/v1/streams/b-1/labels", {"request_id": "r1", "y": 1.0}),
                ("POST", "/v1/observations", {"observations": [{"stream": "b-1", **observation}]}),
                ("POST", "/v1/observations", {"streams": ["b-1"], "x": [[0.1, 0.2, 0.3]], "y": [1.0]}),
                ("DELETE", "/v1/templates/bt", None),
            ]:
                response = other.request(method, path, json=body)
                assert response.status_code in (403, 404), (key[:8], method, path, response.text)
                assert "beta" not in response.text
            for escape in escapes:
                for method in ("GET", "DELETE"):
                    response = other.request(method, f"/v1/streams/{escape}")
                    assert response.status_code in (404, 422), (escape, response.text)
            for body in (
                {"observations": [{"stream": "~beta/b-1", **observation}]},
                {"streams": ["~beta/b-1"], "x": [[0.1, 0.2, 0.3]], "y": [1.0]},
            ):
                response = other.post("/v1/observations", json=body)
                assert response.status_code == 422, response.text
                assert response.json()["error"]["code"] == "invalid_stream_id"
            for prefix in ("~", "~beta/"):
                listed = other.get("/v1/streams", params={"prefix": prefix})
                assert listed.status_code == 422
            listed = other.get("/v1/streams", params={"cursor": "~"})
            assert listed.status_code == 422
            assert "b-1" not in other.get("/v1/streams").json()["streams"]
            assert "bt" not in [t["name"] for t in other.get("/v1/templates").json()["templates"]]
            # Same names in one's own namespace: one's own objects, beta's untouched.
            assert other.put("/v1/streams/b-1?replace=true", json=LINEAR).status_code in (200, 201)
            assert other.put("/v1/templates/bt", json={"prefix": "x-", "spec": LINEAR}).status_code in (
                200,
                201,
            )
            assert other.get("/v1/streams/b-1").json()["figures"]["steps"] == 0
            assert other.delete("/v1/streams/b-1").status_code == 204
            assert other.delete("/v1/templates/bt").status_code == 204
    with client(server, made.beta) as beta:
        after = snapshot()
    assert after == before


async def test_websocket_messages_stay_in_the_namespace(secured: tuple[TrackinServer, Keys]) -> None:
    server, made = secured
    with client(server, made.beta) as beta:
        assert beta.put("/v1/streams/b-ws", json=LINEAR).status_code in (200, 201)
        steps = beta.get("/v1/streams/b-ws").json()["figures"]["steps"]
    header = {"Authorization": f"Bearer {made.alpha}"}
    async with connect(server.ws_url, additional_headers=header, open_timeout=10) as ws:
        for seq, (stream, code) in enumerate(
            [("b-ws", "unknown_stream"), ("~beta/b-ws", "invalid_stream_id")]
        ):
            await ws.send(
                f'{{"seq": {seq}, "observations": [{{"stream": "{stream}", "x": [1, 2, 3], "y": 1}}]}}'
            )
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["error"]["code"] == code, answer
    with client(server, made.beta) as beta:
        assert beta.get("/v1/streams/b-ws").json()["figures"]["steps"] == steps


def test_metrics_need_the_operators_admin_key_or_the_private_port(
    secured: tuple[TrackinServer, Keys],
) -> None:
    server, _ = secured
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{server.url}/metrics").status_code == 401
        private = f"http://127.0.0.1:{server.env['TRACKIN_METRICS_PORT']}"
        scraped = http.get(f"{private}/metrics")
        assert scraped.status_code == 200
        assert "trackin_http_requests_total" in scraped.text
        assert http.get(f"{private}/v1/streams").status_code == 404


def test_the_client_sends_its_api_key(secured: tuple[TrackinServer, Keys]) -> None:
    server, made = secured
    with TrackinClient(server.url, api_key=made.alpha) as tenant:
        tenant.create_stream("via-client", LINEAR)
        assert tenant.observe("via-client", {"x": [0.1, 0.2, 0.3], "y": 1.0})[0]["step"] == 1
        assert "via-client" in list(tenant.list_streams())
        with tenant.ws() as ws:
            (result,) = ws.send([{"stream": "via-client", "x": [0.1, 0.2, 0.3], "y": 1.0}])
            assert result["step"] == 2
        tenant.delete_stream("via-client")
    with TrackinClient(server.url) as anonymous, pytest.raises(TrackinError) as refused:
        anonymous.get_stream("via-client")
    assert refused.value.status == 401


async def test_an_open_server_still_refuses_foreign_origins(server: TrackinServer) -> None:
    """No keys (127.0.0.1, zero setup): any web page could otherwise write to it from a browser."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.ws_url, origin="https://evil.example", open_timeout=10):
            pass
    assert refused.value.response.status_code == 403
    async with connect(server.ws_url, open_timeout=10) as ws:  # no Origin: not a browser
        await ws.send('{"seq": 1, "observations": []}')
        assert "no observations" in str(await asyncio.wait_for(ws.recv(), 10))
    # A browser page that always offers its key still gets it echoed (else the browser drops the socket).
    offered = "trackin.bearer.some-key"
    async with connect(server.ws_url, subprotocols=[offered], open_timeout=10) as ws:
        assert ws.subprotocol == offered
