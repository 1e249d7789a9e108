"""Servers for the service suite.

Starting a server costs seconds (torch, FastAPI), so tests share: ``server`` (default limits) and
``limits_server`` (tiny body, batch and WebSocket limits) each run once per session, and tests keep out of
each other's way with unique stream ids. Tests that stop or break their server start their own with
``servers.start(...)``. A failing test's report carries the log tail of every server it used.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import Servers, TrackinServer

# Every test server: quick template sweeps and a short label lifetime, so those tests wait little.
SHARED_ENV = {
    "TRACKIN_TEMPLATE_SWEEP_SECONDS": "0.2",
    "TRACKIN_PENDING_LABEL_TTL_SECONDS": "2",
}
LIMITS_ENV = {
    **SHARED_ENV,
    "TRACKIN_MAX_BODY_BYTES": "4096",
    "TRACKIN_MAX_REQUEST_OBSERVATIONS": "20",
    "TRACKIN_MAX_WS_MESSAGE_BYTES": "2048",
    "TRACKIN_MAX_WS_IN_FLIGHT": "2",
}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackinServer]:
    with TrackinServer(tmp_path_factory.mktemp("server"), env=SHARED_ENV) as s:
        yield s


@pytest.fixture(scope="session")
def limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackinServer]:
    with TrackinServer(tmp_path_factory.mktemp("limits"), env=LIMITS_ENV) as s:
        yield s


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path, env=SHARED_ENV)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def http(server: TrackinServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def limits_http(limits_server: TrackinServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limits_server.url, timeout=30) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            used = value.started if isinstance(value, Servers) else [value]
            for i, server in enumerate(used):
                if isinstance(server, TrackinServer):
                    report.sections.append((f"trackin serve: {name}[{i}]", server.describe()))
    return report
