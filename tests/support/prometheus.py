"""A real Prometheus for the tests that check dashboards and alerts against live series: started on a free
port in a temp dir with a given scrape config and rule files, queried over its HTTP API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port

__all__ = ["executable", "process", "prometheus", "query", "wait_for"]


def executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run scripts/bootstrap and scripts/system-deps")
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def prometheus(tmp: Path, scrape_configs: list[dict[str, Any]], rules: Sequence[Path] = ()) -> Iterator[str]:
    """Prometheus scraping every second and evaluating ``rules`` every second; its URL."""
    names = []
    for rule in rules:
        shutil.copy(rule, tmp / rule.name)  # loaded for real, to check every rule evaluates cleanly
        names.append(rule.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": names,
        "scrape_configs": scrape_configs,
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = tmp / "prometheus.log"
    args = [
        executable("prometheus"),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with process(args, log) as proc:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200

        wait_for("prometheus /-/ready", ready, 30, log)
        yield url


def query(prometheus: str, expr: str) -> list[Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[Any] = body["data"]["result"]
    return result
