"""`RequestIds`: an exception no handler maps becomes a 500 with the error schema, logged with its id.

No request to the real service raises on purpose (each that did was a bug, fixed), so the fault is an app
that raises: the one fault that cannot be caused for real.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from trackin.service.transport.requestid import RequestIds


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


async def test_unexpected_exception_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx.ASGITransport(app=RequestIds(_broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.ERROR, logger="trackin"):
            response = await client.post("/v1/x", headers={"x-request-id": "req-7"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-7"
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert error["request_id"] == "req-7"
    assert "req-7" in error["message"]
    assert set(error) == {"code", "message", "field", "stream", "request_id"}
    logged = [r for r in caplog.records if "req-7" in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None  # the traceback
