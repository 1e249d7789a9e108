"""A real trackin scraped by a real Prometheus: every dashboard query and every alert's measure returns data.

This is what the static name check cannot see: label sets, series that only exist once traffic flows,
histograms that `histogram_quantile` can read, and rules that evaluate without error on live data.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.promql import ALERTS, all_expressions
from tests.support.ports import free_port
from tests.support.prometheus import executable, process, query, wait_for
from tests.support.prometheus import prometheus as start_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STREAMS = ("e2e-a", "e2e-b")  # both opt in to per-stream series
VARIABLES = {"instance": ".*", "stream": STREAMS[0], "__rate_interval": "30s", "__interval": "30s"}


@pytest.fixture(scope="module")
def trackin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("trackin")
    port = free_port()
    log = tmp / "trackin.log"
    args = [executable("trackin"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with process([*args, "--data-dir", str(tmp / "data")], log) as proc:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200

        wait_for("trackin /readyz (kernels compiled)", up, 90, log)
        yield url


@pytest.fixture(scope="module")
def prometheus(trackin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = trackin.removeprefix("http://")
    scrape = [{"job_name": "trackin", "static_configs": [{"targets": [target]}]}]
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), scrape, [ALERTS]) as url:
        yield url


def drive_traffic(trackin: str, seconds: float) -> None:
    """Good batches on the opt-in streams and a plain one, plus rejected inputs and a 404."""
    rng = random.Random(0)
    with httpx.Client(base_url=trackin, timeout=10) as client:
        for stream in (*STREAMS, "e2e-plain"):
            body = {"model": {"family": "linear", "in_dim": 4}, "export_metrics": stream in STREAMS}
            assert client.put(f"/v1/streams/{stream}", json=body).status_code in (200, 201)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for stream in (*STREAMS, "e2e-plain"):
                batch = []
                for _ in range(8):
                    x = [rng.gauss(0, 1) for _ in range(4)]
                    batch.append({"x": x, "y": math.tanh(sum(x))})
                response = client.post(f"/v1/streams/{stream}/observations", json=batch)
                assert response.status_code == 200, response.text
            wrong_shape = [{"x": [1.0, 2.0], "y": 1.0}]
            assert client.post(f"/v1/streams/{STREAMS[0]}/observations", json=wrong_shape).is_client_error
            not_json = client.post(
                f"/v1/streams/{STREAMS[1]}/observations",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            assert not_json.is_client_error
            assert client.get("/v1/streams/e2e-missing").status_code == 404
            time.sleep(0.25)


def test_every_dashboard_and_alert_expression_returns_data(trackin: str, prometheus: str) -> None:
    drive_traffic(trackin, seconds=6)
    traffic_ended = time.time()  # Prometheus stamps samples with this host's clock

    def scraped_enough() -> bool:
        samples = query(prometheus, 'count_over_time(up{job="trackin"}[1m])')
        per_stream = query(prometheus, f'trackin_stream_loss_ewma{{stream="{STREAMS[0]}"}}')
        return bool(samples) and float(samples[0]["value"][1]) >= 8 and bool(per_stream)

    def scraped_after_the_traffic() -> bool:
        latest = query(prometheus, 'timestamp(up{job="trackin"})')
        return bool(latest) and float(latest[0]["value"][1]) > traffic_ended

    wait_for("8 scrapes and the opt-in stream series", scraped_enough, 30)
    wait_for("a scrape started after the last request", scraped_after_the_traffic, 30)

    expressions = all_expressions(VARIABLES)
    empty = [f"{e.where}: {e.expr}" for e in expressions if not query(prometheus, e.expr)]
    assert not empty, "no data for:\n" + "\n".join(empty)

    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [r for g in rules for r in g["rules"]]
    assert len(evaluated) == sum(1 for e in expressions if e.kind == "alert")
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in evaluated if r["health"] != "ok"]
    assert not unhealthy, unhealthy
