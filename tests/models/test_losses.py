"""Each loss's closed-form gradient equals autograd's on its value (float64), for every loss, output width and
Huber delta (one or per row); the pool's closed-form path relies on it."""

from __future__ import annotations

import pytest
import torch

from trackin.models.losses import LOSSES, get

DT = torch.float64

CASES = [
    (name, out, delta)
    for name in LOSSES
    for out in (1, 3)
    for delta in ((1.0, "rows") if name == "huber" else (1.0,))
]


@pytest.mark.parametrize(("name", "out", "delta"), CASES, ids=[f"{n}-out{o}-{d}" for n, o, d in CASES])
def test_gradient_equals_autograd(name: str, out: int, delta: float | str) -> None:
    g = torch.Generator().manual_seed(out)
    rows = 6
    output = (3 * torch.randn(rows, out, generator=g, dtype=DT)).requires_grad_(True)
    target = (
        torch.rand(rows, out, generator=g, dtype=DT) if name == "bce" else torch.randn(rows, out, dtype=DT)
    )
    d: float | torch.Tensor = 1.0 if delta != "rows" else torch.linspace(0.2, 4.0, rows, dtype=DT)
    loss = get(name)  # type: ignore[arg-type]
    value = loss(output, target, d)
    assert value.shape == (rows,)
    (expected,) = torch.autograd.grad(value.sum(), output)
    torch.testing.assert_close(loss.gradient(output.detach(), target, d), expected, rtol=1e-12, atol=1e-14)


def test_each_loss_is_registered_under_its_name() -> None:
    assert list(LOSSES) == ["mse", "huber", "bce"]
    assert all(loss.name == name for name, loss in LOSSES.items())
