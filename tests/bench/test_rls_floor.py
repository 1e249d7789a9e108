"""bench/rls_floor.py: what it times is the RLS recursion of every head (float64 reference)."""

from __future__ import annotations

import numpy as np

from bench.rls_floor import HEADS, rls


def reference(cov: np.ndarray, x: np.ndarray, lam: float) -> np.ndarray:
    """``(P - P x x^T P / (lam + x^T P x)) / lam`` in float64, P symmetric."""
    u = cov @ x
    return (cov - np.outer(u, u) / (lam + x @ u)) / lam


def test_the_loops_compute_the_rls_update_of_each_head_of_each_observed_stream() -> None:
    rng = np.random.default_rng(3)
    streams, p = 3, 5
    basis = rng.normal(size=(streams, len(HEADS), p, p))
    start = (basis @ basis.transpose(0, 1, 3, 2) / p + np.eye(p)).astype(np.float32)  # positive definite
    phi = rng.normal(size=(4, p)).astype(np.float32)
    slots, rows = np.array([2, 0, 2]), np.array([1, 3, 0])
    lam = np.array(HEADS, dtype=np.float32)
    expected = start.astype(np.float64)
    for s, r in zip(slots, rows, strict=True):
        for h, forget in enumerate(HEADS):
            expected[s, h] = reference(expected[s, h], phi[r].astype(np.float64), float(np.float32(forget)))
    flat = start.reshape(streams, -1).copy()
    rls(flat, phi, slots, rows, lam)
    cov = flat.reshape(start.shape)
    np.testing.assert_allclose(cov, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(cov[1], start[1])  # a stream not observed keeps its covariances
