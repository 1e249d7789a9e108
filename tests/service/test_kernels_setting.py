"""The service compiles its fused kernels at start-up, before it reports ready, and ``TRACKIN_KERNELS=torch``
keeps them off (real servers; the kernels' math is tests/models/test_fused.py's)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.server import TrackinServer

FIRST_ORDER = {
    "model": {"family": "linear", "in_dim": 2},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "standardize": False,  # the first-order kernel runs raw units
}


def _steps(server: TrackinServer) -> list[float]:
    """Create a first-order stream, observe it twice; the second prediction."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.put("/v1/streams/s", json=FIRST_ORDER).status_code in (200, 201)
        body = {"x": [1.0, 2.0], "y": 3.0}
        for _ in range(2):
            reply = client.post("/v1/streams/s/observations", json=body)
            assert reply.status_code == 200, reply.text
        prediction = reply.json()["results"][0]["prediction"]
        return [float(v) for v in (prediction if isinstance(prediction, list) else [prediction])]


def test_kernels_are_compiled_before_ready_and_torch_keeps_them_off(tmp_path: Path) -> None:
    with TrackinServer(tmp_path / "auto") as fused:  # returns once /readyz answers 200
        assert "fused kernels ready" in fused.logs(), fused.describe()
        by_kernel = _steps(fused)
    with TrackinServer(tmp_path / "torch", env={"TRACKIN_KERNELS": "torch"}) as plain:
        assert "fused kernels ready" not in plain.logs(), plain.describe()
        by_torch = _steps(plain)
    # one SGD step from zero weights: w = 0.1 * 2 * 3 * [1, 2], b = 0.6, so the prediction is 3.6 either way
    assert abs(by_kernel[0] - 3.6) < 1e-5
    assert abs(by_torch[0] - 3.6) < 1e-5
