"""The fused CPU kernel equals the torch round it stands in for, in every outcome and every byte of state
that matters: each optimizer and option, each loss, each closed-form family, raw units and the defaults
(standardisation, the naive mix of series), drift alarms and resets, non-finite rows and repeats within a
batch. float64 is held to float64 tolerances (the math itself),
float32 to float32 ones (tests/support/tolerances.py). The engine-equals-reference table runs over both
kernels too (tests/models/test_engine.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.support.tolerances import step_ops, tolerance
from trackin.models import fused_kernel as K
from trackin.models import fused_round, kernel_threads, naive_mix, standardize, tracking
from trackin.models.engine import Engine
from trackin.models.fused_round import FusedRound
from trackin.models.fused_warmup import warm_up
from trackin.models.kernels import fused_applies
from trackin.models.pool import ObserveResult, StreamPool
from trackin.models.specs import (
    AdamSpec,
    ARModel,
    DriftSpec,
    LinearModel,
    MLPModel,
    SGDSpec,
    StreamSpec,
    TrackInSpec,
)

FIRST = {"precondition": "none"}
# Per-stream variations inside one pool (every setting is a per-row column for the kernel).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "trackin": [
        {**FIRST, "beta_rule": "cos", "debias": True},
        {**FIRST, "beta_rule": "norm", "debias": False, "weight_decay": 0.01, "lr": 0.02},
        {**FIRST, "beta_rule": "constant", "max_grad_norm": 0.3, "gamma": 0.5},
        {**FIRST, "beta_rule": "norm", "gamma": 0.0, "beta": 0.5, "max_grad_norm": 2.0},
    ],
    "trackin-eta": [
        {**FIRST, "eta": 0.05, "beta_rule": "cos", "eps_decay": 0.5},
        {**FIRST, "eta": 0.1, "beta_rule": "norm", "debias": False, "max_grad_norm": 0.5},
        {**FIRST, "eta": 0.02, "beta_rule": "constant", "weight_decay": 0.05, "eps_decay": 1.0},
    ],
    "sgd": [{}, {"weight_decay": 0.01, "lr": 0.02}, {"max_grad_norm": 0.4}],
    "sgd-momentum": [
        {"momentum": 0.9},
        {"momentum": 0.5, "dampening": 0.5, "debias": True},
        {"momentum": 0.8, "debias": True, "max_grad_norm": 0.5, "weight_decay": 0.01},
    ],
    "adam": [{}, {"beta1": 0.0, "eps": 1e-3, "lr": 0.05}, {"weight_decay": 0.01, "max_grad_norm": 0.5}],
}
SPEC_CLASS = {"trackin": TrackInSpec, "trackin-eta": TrackInSpec, "sgd": SGDSpec, "sgd-momentum": SGDSpec}
MODELS: dict[str, Any] = {
    "linear": LinearModel(in_dim=3, init="random", seed=4),
    "linear2": LinearModel(in_dim=2, out_dim=2, init="random"),
    "ar-level": ARModel(lags=2, target="level", init="random"),
    "ar2-delta": ARModel(dim=2, lags=2, target="delta"),
}
DRIFTS = [DriftSpec(warmup=3, threshold=2.0, delta=0.5, reset_momentum=True), DriftSpec(enabled=False)]


def specs_for(model: str, loss: str, optimizer: str, dtype: str, units: str = "raw") -> list[StreamSpec]:
    """``units``: ``raw`` (no standardisation, no naive mix), ``default`` (both, where they apply) or
    ``standardized`` (standardisation without the mix)."""
    cls = SPEC_CLASS.get(optimizer, AdamSpec)
    return [
        StreamSpec(
            model=MODELS[model],
            loss=loss,  # type: ignore[arg-type]
            huber_delta=(0.5, 1.0)[k % 2],
            optimizer=cls(**options),
            dtype=dtype,  # type: ignore[arg-type]
            drift=DRIFTS[k % 3 == 2],
            standardize=units != "raw",
            mix_naive=units == "default",
        )
        for k, options in enumerate(VARIANTS[optimizer])
    ]


def batches(
    spec: StreamSpec, streams: int, seed: int, scale: float = 1.0, offset: float = 0.0
) -> list[tuple[np.ndarray, torch.Tensor, Any]]:
    """Batches with repeated streams, a jump halfway (drift alarms) and a few non-finite values, in units
    ``x * scale + offset`` (not for bce targets)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    ar = isinstance(spec.model, ARModel)
    width = spec.model.dim if ar else spec.model.in_dim  # type: ignore[union-attr]
    for b in range(12):
        slots = torch.randint(0, streams, (9,), generator=g).numpy()
        x = torch.randn(9, width, generator=g, dtype=torch.float64)
        y = None if ar else (x.sum(1, keepdim=True) * 0.7 + 0.2).expand(9, spec.model.out_dim).clone()  # type: ignore[union-attr]
        jump = 6.0 if b >= 6 else 0.0
        if spec.loss != "bce":
            x = x * scale + offset
            y = None if y is None else y * scale + offset
            jump *= scale
        if ar:
            x = x + jump
            if spec.loss == "bce":
                x = (x > jump).double()
        else:
            assert y is not None
            y = y + jump
            if spec.loss == "bce":
                y = (y > jump).double()
        if b in (3, 8):
            (x if b == 3 else (x if y is None else y))[b % 9, 0] = torch.nan if b == 3 else torch.inf
        out.append((slots, x, y))
    return out


def assert_same(a: ObserveResult, b: ObserveResult, tol: dict[str, float]) -> None:
    for name in ("steps", "applied", "warming", "nonfinite", "drift"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("predictions", "losses", "forecasts"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            torch.testing.assert_close(x, y, equal_nan=True, **tol, msg=name)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", list(VARIANTS))
@pytest.mark.parametrize(
    ("model", "loss"),
    [
        ("linear", "mse"),
        ("linear2", "huber"),
        ("ar-level", "bce"),
        ("ar2-delta", "mse"),
        ("linear", "bce"),
        ("ar-level", "huber"),
    ],
)
@pytest.mark.parametrize("units", ["raw", "default"])
def test_fused_kernel_equals_the_torch_round(
    model: str, loss: str, optimizer: str, dtype: str, units: str
) -> None:
    """``default``: standardised, and series served with the naive mix, on data in units of 1e3 +- 10."""
    specs = specs_for(model, loss, optimizer, dtype, units)
    pools = [StreamPool(specs[0], kernels="auto"), StreamPool(specs[0], kernels="torch")]
    assert pools[0].fused
    assert not pools[1].fused
    for pool in pools:
        for spec in specs:
            pool.add(spec)
    steps = 0
    seed = len(model) + len(loss) + len(optimizer)
    scale, offset = (1.0, 0.0) if units == "raw" else (10.0, 1e3)
    for slots, x, y in batches(specs[0], len(specs), seed, scale, offset):
        steps += 2
        tol = tolerance(dtype, ops=step_ops(specs[0].model), steps=steps, scale=8.0**2)
        a, b = (pool.observe(slots, x, y) for pool in pools)
        assert_same(a, b, dict(tol))
    assert bool(a.applied.any())
    tol = tolerance(dtype, ops=step_ops(specs[0].model), steps=steps, scale=8.0**2)
    every = np.arange(len(specs))
    probe = None if y is None else x[: len(specs)] * 1.5  # predictions without learning: the kernel's own
    predicted = [pool.predict(every, probe) for pool in pools]
    assert predicted[0].dtype == predicted[1].dtype
    torch.testing.assert_close(*predicted, equal_nan=True, **tol)  # type: ignore[arg-type]
    for slot in range(len(specs)):
        fused, torch_ = pools[0].export(slot), pools[1].export(slot)
        for key, value in fused.items():
            if value.dtype.is_floating_point:
                torch.testing.assert_close(value, torch_[key], equal_nan=True, **tol, msg=key)
            else:
                assert torch.equal(value, torch_[key]), key


@pytest.mark.parametrize("optimizer", ["trackin-eta", "sgd-momentum", "adam"])
@pytest.mark.parametrize(("model", "loss"), [("linear2", "huber"), ("ar2-delta", "mse"), ("ar-level", "bce")])
def test_a_batch_split_over_threads_equals_one_thread_to_the_bit(
    model: str, loss: str, optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With three intra-op threads a batch of 864 rows (each stream many times, drift alarms, non-finite
    rows) is stepped as runs of distinct streams at once (:mod:`models.kernel_threads`); each stream's rows
    stay in their order in one run, so outcomes and state are one thread's to the bit (one code path)."""
    specs = specs_for(model, loss, optimizer, "float32", "default")
    pools = [StreamPool(specs[0], capacity=2) for _ in range(2)]
    for pool in pools:
        for spec in specs:
            pool.add(spec)
    runs = _count_runs(monkeypatch)
    threads = torch.get_num_threads()
    try:
        for seed in range(3):
            parts = [batches(specs[0], len(specs), 10 * seed + k) for k in range(8)]
            rows = [row for part in parts for row in part]
            slots = np.concatenate([r[0] for r in rows])
            x = torch.cat([r[1] for r in rows]).float()
            y = None if rows[0][2] is None else torch.cat([r[2] for r in rows]).float()
            out = []
            for k, pool in enumerate(pools):  # pool 0 splits over three threads, pool 1 runs on one
                torch.set_num_threads(1 if k else 3)
                out.append(pool.observe(slots, x.clone(), None if y is None else y.clone()))
            assert_same(out[0], out[1], {"rtol": 0.0, "atol": 0.0})
            for key, value in pools[1].state.items():
                torch.testing.assert_close(
                    pools[0].state[key][: len(specs)], value[: len(specs)], rtol=0, atol=0, equal_nan=True
                )
    finally:
        torch.set_num_threads(threads)
    assert runs == [3, 3, 3], "each of pool 0's batches was stepped as three runs at once"


@pytest.mark.parametrize("optimizer", ["trackin-eta", "sgd-momentum", "adam"])
@pytest.mark.parametrize(("model", "loss"), [("linear2", "huber"), ("ar2-delta", "mse"), ("ar-level", "bce")])
def test_rows_stepped_with_the_next_rows_state_prefetched_equal_rows_without_to_the_bit(
    model: str, loss: str, optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel prefetches each next row's state (`fused_round.PREFETCH_NEXT_ROW`): a hint to the caches
    that must change no value. Pool 0 prefetches, pool 1 does not; the same batches of 864 rows (each stream
    many times, drift alarms, non-finite rows)."""
    specs = specs_for(model, loss, optimizer, "float32", "default")
    pools = [StreamPool(specs[0], capacity=2) for _ in range(2)]
    for pool in pools:
        for spec in specs:
            pool.add(spec)
    prefetched: list[int] = []
    run = FusedRound.run

    def observed(self: FusedRound, *args: Any) -> Any:
        out = run(self, *args)
        prefetched.append(int(self._cfg[K.PREFETCH]))
        return out

    monkeypatch.setattr(FusedRound, "run", observed)  # read after each call, not replaced
    for seed in range(3):
        parts = [batches(specs[0], len(specs), 10 * seed + k) for k in range(8)]
        rows = [row for part in parts for row in part]
        slots = np.concatenate([r[0] for r in rows])
        x = torch.cat([r[1] for r in rows]).float()
        y = None if rows[0][2] is None else torch.cat([r[2] for r in rows]).float()
        out = []
        for k, pool in enumerate(pools):
            monkeypatch.setattr(fused_round, "PREFETCH_NEXT_ROW", not k)
            out.append(pool.observe(slots, x.clone(), None if y is None else y.clone()))
        assert_same(out[0], out[1], {"rtol": 0.0, "atol": 0.0})
        for key, value in pools[1].state.items():
            torch.testing.assert_close(
                pools[0].state[key][: len(specs)], value[: len(specs)], rtol=0, atol=0, equal_nan=True
            )
    assert prefetched == [1, 0] * 3, "pool 0 prefetched every batch, pool 1 none"


def _count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many runs each split batch was stepped in (`kernel_threads.run_split` observed, not replaced)."""
    runs: list[int] = []
    split = kernel_threads.run_split

    def observed(entry: Any, args: tuple[Any, ...], parts: list[np.ndarray]) -> None:
        runs.append(len(parts))
        split(entry, args, parts)

    monkeypatch.setattr(kernel_threads, "run_split", observed)
    return runs


def test_which_pools_are_fused() -> None:
    assert fused_applies(torch.device("cpu"), torch.float32)
    assert fused_applies(torch.device("cpu"), torch.float64)
    assert not fused_applies(torch.device("cpu"), torch.float16)
    assert not fused_applies(torch.device("meta"), torch.float32)
    first_order = StreamSpec(
        model=LinearModel(in_dim=2), optimizer=TrackInSpec(**FIRST), standardize=False, mix_naive=False
    )
    assert StreamPool(first_order).fused
    assert not StreamPool(first_order, kernels="torch").fused
    standardized = first_order.model_copy(update={"standardize": True})
    assert StreamPool(standardized).fused  # the defaults: standardised, and the naive mix for series
    assert StreamPool(StreamSpec(model=ARModel(), optimizer=SGDSpec())).fused
    assert not StreamPool(standardized, kernels="torch").fused
    assert not StreamPool(StreamSpec(model=MLPModel(in_dim=2), optimizer=SGDSpec())).fused
    assert not StreamPool(StreamSpec(model=ARModel(hidden=(3,)), optimizer=SGDSpec())).fused
    assert StreamPool(StreamSpec(model=LinearModel(in_dim=2))).fused  # the tracking path: its own kernel
    for kernels, fused in (("auto", True), ("torch", False)):
        engine = Engine(kernels=kernels)  # type: ignore[arg-type]
        engine.add("a", first_order)
        assert engine.locate("a").pool.fused is fused


def test_kernel_constants_are_the_models() -> None:
    """numba freezes the kernel's copies of the constants into its cache: they must be the definitions'."""
    assert (K.ALPHA, K.BOUND, K.CLIP, K.FEATURE_CLIP) == (
        standardize.ALPHA,
        standardize.BOUND,
        standardize.CLIP,
        standardize.FEATURE_CLIP,
    )
    assert (K.MIX_RHO, K.MIX_ETA, K.MIX_BIAS, K.MIX_POWER, K.MIX_WARMUP) == (
        naive_mix.MIX_RHO,
        tracking.MIX_ETA,
        naive_mix.MIX_BIAS,  # the first-order mix keeps its own burden of proof and warm-up
        tracking.MIX_POWER,
        naive_mix.MIX_WARMUP,
    )


def test_warm_up_compiles_both_dtypes() -> None:
    assert set(warm_up()) == {"float32", "float64", "tracking"}
    for kernel in (K.observe_rows, K.predict_rows):  # both kernels, both dtypes: no request compiles
        assert {str(signature[0].dtype) for signature in kernel.signatures} >= {"float32", "float64"}
    assert warm_up(kernels="torch") == {}


def test_grown_pool_and_readonly_inputs() -> None:
    """The kernel follows the buffers when the pool grows, and takes read-only numpy batches."""
    spec = StreamSpec(
        model=LinearModel(in_dim=2), optimizer=SGDSpec(), dtype="float64", standardize=False, mix_naive=False
    )
    fused, torch_ = StreamPool(spec, capacity=1), StreamPool(spec, capacity=1, kernels="torch")
    kernel = fused._round
    assert isinstance(kernel, FusedRound)
    for k in range(5):
        x = np.frombuffer(np.arange(2.0 * (k + 1)).tobytes()).reshape(k + 1, 2)
        assert not x.flags.writeable
        for pool in (fused, torch_):
            pool.add(spec)
        result = kernel.run(np.arange(k + 1), x, np.ones((k + 1, 1)))
        expected = torch_.observe(np.arange(k + 1), torch.from_numpy(x.copy()), torch.ones(k + 1, 1))
        assert result.step.tolist() == expected.steps.tolist()
        np.testing.assert_allclose(result.pred, expected.predictions.numpy(), rtol=1e-12, atol=1e-12)
    assert fused.capacity == 8
    for slot in range(5):
        np.testing.assert_allclose(
            fused.export(slot)["param/weight0"], torch_.export(slot)["param/weight0"], rtol=1e-12, atol=1e-12
        )
