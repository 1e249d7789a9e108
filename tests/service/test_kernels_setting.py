"""The service compiles its fused kernels at start-up, before it reports ready; ``TRACKIN_KERNELS=torch``
keeps them off; ``TRACKIN_TORCH_THREADS`` splits big batches over threads to the same answers (real
servers; the kernels' math is tests/models/test_fused.py's and test_fused_tracking.py's)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

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


def _threads_of(pid: int | None) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _big_batches(server: TrackinServer) -> tuple[list[list[float]], int]:
    """Forty default linear streams, then four columnar batches of 600 observations (each stream some 15
    times a batch): every prediction, and how many threads the batches started in the server."""
    rng = np.random.default_rng(5)
    names = [f"s{k}" for k in range(40)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name in names:
            spec = {"model": {"family": "linear", "in_dim": 4}}
            assert client.put(f"/v1/streams/{name}", json=spec).status_code == 201
        before = _threads_of(server.pid)
        predictions = []
        for _ in range(4):
            who = rng.integers(0, len(names), 600)
            x = rng.normal(size=(600, 4))
            body = {"streams": [names[k] for k in who], "x": x.tolist(), "y": (x[:, 0] - x[:, 3]).tolist()}
            reply = client.post("/v1/observations", json=body)
            assert reply.status_code == 200, reply.text
            predictions.append(reply.json()["prediction"])
        return predictions, _threads_of(server.pid) - before


def test_a_batch_split_over_intra_op_threads_answers_as_one_thread(tmp_path: Path) -> None:
    """``TRACKIN_TORCH_THREADS=3``: the tracking kernel steps each big batch as runs of distinct streams
    on three threads (helper threads started for it), and every answer is one thread's to the bit."""
    with TrackinServer(tmp_path / "one") as one:
        alone, started_alone = _big_batches(one)
    with TrackinServer(tmp_path / "three", env={"TRACKIN_TORCH_THREADS": "3"}) as three:
        split, started_split = _big_batches(three)
    assert split == alone
    assert started_split >= started_alone + 2, "two helper threads stepped runs beside the engine thread"
