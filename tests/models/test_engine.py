"""The batched engine equals the per-stream reference: every optimizer, family and loss, any batch mix.

For each case of the table, hypothesis draws a few streams with their own hyperparameters (mixed, or all the
same so the pool takes its shared-setting path), a sequence of batches of stream choices with repeats, and
data; the engine's answers, parameters and optimizer state must equal those of
:class:`tests.models.reference.ReferenceStream` stepping each stream one observation at a time.

The two paths round differently (the engine's row sums and ``baddbmm`` against the reference's ``addmm`` and
autograd, with kernels the CPU picks), so they are equal within :func:`tests.support.tolerances.tolerance`
for the stream's dtype, model and steps taken. The float32 cases also run with the reference rounding as
another CPU would (:class:`tests.support.rounding.OtherRounding`), which the tolerance must allow, and the
long run checks that the tolerance still notices a path a thousand times less precise than float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.models.reference import Outcome, ReferenceStream
from tests.support.rounding import OtherRounding
from tests.support.tolerances import Tolerance, memory, step_ops, tolerance
from trackin.models.engine import Engine, ItemResult, UnknownStreamError
from trackin.models.kernels import Kernels
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

# Magnitude of the values a stream computes from: |x| and |y| stay below 4 but for draws past 4 sigma, ar
# deltas and parameter terms below 8 (see _data).
SCALE = 8.0
SQUARED = ("opt/sq_avg", "opt/exp_avg_sq")  # averages of squared gradients: scale**2
NORM_OPS = 12  # rounded operations of the running statistics and the standardisation, per observation
SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass(frozen=True)
class Case:
    """One row of the table: a model, a loss, an optimizer kind and its per-stream choices, a dtype."""

    name: str
    model: Any
    loss: str = "mse"
    optimizer: str = "trackin"
    options: dict[str, Any] | None = None  # fixed optimizer options (pool-defining ones, like eta > 0)
    dtype: str = "float64"
    standardize: bool = True  # False: the first-order path in raw units
    units: tuple[float, float] = (1.0, 0.0)  # the data's scale and offset (standardisation must undo them)


LIN = LinearModel(in_dim=3, init="random", seed=1)
MLP_TANH = MLPModel(in_dim=3, hidden=(5,), activation="tanh", seed=2)
MLP_RELU = MLPModel(in_dim=3, hidden=(4, 3), activation="relu", seed=3)

FIRST = {"precondition": "none"}

CASES = [
    Case("linear-mse-trackin", LIN),
    Case("linear-mse-trackin-f32", LIN, dtype="float32"),
    Case("linear-huber-trackin-eta", LIN, "huber", options={"eta": 0.05}),
    Case("linear-bce-trackin", LIN, "bce"),
    Case(
        "linear2-mse-trackin-eta-f32", LinearModel(in_dim=4, out_dim=2), options={"eta": 0.1}, dtype="float32"
    ),
    Case("mlp-mse-trackin", MLP_TANH),
    Case("mlp-huber-trackin-eta-f32", MLP_RELU, "huber", options={"eta": 0.05}, dtype="float32"),
    Case("mlp-bce-trackin", MLPModel(in_dim=3, hidden=(4,), activation="gelu"), "bce"),
    Case("ar-level-mse-trackin", ARModel(lags=3, target="level")),
    Case(
        "ar-delta-huber-trackin-eta",
        ARModel(lags=2, target="delta", init="random"),
        "huber",
        options={"eta": 0.1},
    ),
    Case("ar-delta-hidden-mse-trackin-f32", ARModel(lags=3, hidden=(4,), init="random"), dtype="float32"),
    Case("ar-level-hidden-bce-trackin", ARModel(lags=2, target="level", hidden=(3,), init="random"), "bce"),
    Case("ar2-delta-mse-trackin", ARModel(dim=2, lags=2, target="delta")),
    Case("linear-mse-sgd", LIN, optimizer="sgd"),
    Case("linear-huber-sgd-momentum", LIN, "huber", "sgd", options={"momentum": 0.9}),
    Case("mlp-mse-sgd-momentum-f32", MLP_TANH, optimizer="sgd", options={"momentum": 0.5}, dtype="float32"),
    Case("ar-delta-mse-sgd-momentum", ARModel(lags=2), optimizer="sgd", options={"momentum": 0.8}),
    Case("linear-mse-adam", LIN, optimizer="adam"),
    Case("linear-bce-adam-f32", LIN, "bce", "adam", dtype="float32"),
    Case("mlp-huber-adam", MLP_RELU, "huber", "adam"),
    Case("ar-level-mse-adam", ARModel(lags=3, target="level", hidden=(3,), init="random"), optimizer="adam"),
    Case("mlp-mse-trackin-raw", MLP_TANH, standardize=False),
    Case(
        "ar-level-hidden-huber-sgd-raw",
        ARModel(lags=2, target="level", hidden=(3,)),
        "huber",
        "sgd",
        standardize=False,
    ),
    Case("linear-bce-sgd-raw-f32", LIN, "bce", "sgd", dtype="float32", standardize=False),
    Case("mlp-huber-trackin-levels", MLP_TANH, "huber", units=(100.0, 1e4)),
    Case("mlp-mse-adam-levels-f32", MLP_RELU, optimizer="adam", dtype="float32", units=(10.0, 1e3)),
    Case("ar-delta-hidden-mse-trackin-levels", ARModel(lags=3, hidden=(4,)), units=(1e3, 1e6)),
    Case(
        "ar-level-hidden-mse-sgd-levels-f32",
        ARModel(lags=2, target="level", hidden=(3,)),
        optimizer="sgd",
        dtype="float32",
        units=(10.0, 1e3),
    ),
    Case("linear-bce-trackin-levels", LIN, "bce", units=(1e3, 1e5)),
    # TrackIn off the tracking path (precondition none) on closed-form families: the fused kernel's cases
    # (with the default standardisation and, for series, the naive mix, in the user's units; and raw units)
    Case("linear-mse-trackin-first-levels-f32", LIN, options=FIRST, dtype="float32", units=(10.0, 1e3)),
    Case(
        "ar2-delta-huber-trackin-first-eta-levels",
        ARModel(dim=2, lags=2),
        "huber",
        options={**FIRST, "eta": 0.1},
        units=(100.0, 1e4),
    ),
    Case(
        "ar-level-mse-sgd-momentum-levels-f32",
        ARModel(lags=3, target="level", init="random"),
        optimizer="sgd",
        options={"momentum": 0.8},
        dtype="float32",
        units=(10.0, 1e3),
    ),
    Case("linear-mse-trackin-first", LIN, options={"precondition": "none"}, standardize=False),
    Case(
        "linear-mse-trackin-first-eta-f32",
        LIN,
        options={**FIRST, "eta": 0.05},
        dtype="float32",
        standardize=False,
    ),
    Case(
        "linear2-huber-trackin-first-eta",
        LinearModel(in_dim=4, out_dim=2),
        "huber",
        options={**FIRST, "eta": 0.1},
        standardize=False,
    ),
    Case("ar-level-mse-trackin-first", ARModel(lags=3, target="level"), options=FIRST, standardize=False),
    Case(
        "ar2-delta-huber-trackin-first-eta-f32",
        ARModel(dim=2, lags=2),
        "huber",
        options={**FIRST, "eta": 0.1},
        dtype="float32",
        standardize=False,
    ),
    Case(
        "ar-level-bce-adam-f32",
        ARModel(lags=2, target="level", init="random"),
        "bce",
        "adam",
        dtype="float32",
        standardize=False,
    ),
]

# Per-stream choices: each stream draws one value per hyperparameter (or all streams share one draw).
CHOICES: dict[str, dict[str, list[Any]]] = {
    "trackin": {
        "lr": [0.01, 0.05, 0.2],
        "gamma": [0.0, 0.5, 0.9],
        "beta": [0.0, 0.5, 1.0],
        "beta_rule": ["constant", "cos", "norm"],
        "debias": [True, False],
        "eps_decay": [0.5, 0.9, 1.0],
        "weight_decay": [0.0, 0.01],
        "max_grad_norm": [None, 0.5],
    },
    "sgd": {
        "lr": [0.01, 0.05, 0.1],
        "dampening": [0.0, 0.5],
        "debias": [True, False],
        "weight_decay": [0.0, 0.01],
        "max_grad_norm": [None, 0.5],
    },
    "adam": {
        "lr": [0.01, 0.05],
        "beta1": [0.0, 0.9],
        "beta2": [0.9, 0.999],
        "eps": [1e-8, 1e-3],
        "weight_decay": [0.0, 0.01],
        "max_grad_norm": [None, 0.5],
    },
}
ETA_CHOICES = [0.01, 0.1]
MOMENTUM_CHOICES = [0.5, 0.9]


def _optimizer(case: Case, draw: st.DrawFn, shared: dict[str, Any] | None) -> Any:
    options = dict(case.options or {})
    for name, values in CHOICES[case.optimizer].items():
        options[name] = shared[name] if shared is not None else draw(st.sampled_from(values))
    if case.optimizer == "trackin":
        if "eta" in options:
            options["eta"] = draw(st.sampled_from(ETA_CHOICES))
        return TrackInSpec(**options)
    if case.optimizer == "sgd":
        if "momentum" in options:
            options["momentum"] = draw(st.sampled_from(MOMENTUM_CHOICES))
        return SGDSpec(**options)
    return AdamSpec(**options)


@st.composite
def scenarios(draw: st.DrawFn, case: Case) -> tuple[list[StreamSpec], list[list[int]], int]:
    """Stream specs (mixed or shared hyperparameters), batches of stream indices, a data seed."""
    n_streams = draw(st.integers(1, 5))
    shared = None
    if draw(st.booleans()):
        shared = {k: draw(st.sampled_from(v)) for k, v in CHOICES[case.optimizer].items()}
    specs = [
        StreamSpec(
            model=case.model,
            loss=case.loss,  # type: ignore[arg-type]
            huber_delta=draw(st.sampled_from([0.5, 1.0])) if shared is None else 1.0,
            optimizer=_optimizer(case, draw, shared),
            dtype=case.dtype,  # type: ignore[arg-type]
            standardize=case.standardize,
        )
        for _ in range(n_streams)
    ]
    batch = st.lists(st.integers(0, n_streams - 1), min_size=1, max_size=64)
    batches = draw(st.lists(batch, min_size=1, max_size=3))
    return specs, batches, draw(st.integers(0, 2**16))


Units = tuple[float, float]
"""The data's scale and offset: values are ``scale * v + offset`` for unit-sized ``v`` (labels excepted)."""
UNIT: Units = (1.0, 0.0)


def _data(
    spec: StreamSpec, rng: np.random.Generator, units: Units = UNIT
) -> tuple[np.ndarray, np.ndarray | None]:
    model = spec.model
    u, o = units
    if isinstance(model, ARModel):
        value = rng.normal(size=model.dim) * u + o
        return (rng.integers(0, 2, size=model.dim).astype(float) if spec.loss == "bce" else value), None
    x = rng.normal(size=model.in_dim)
    y = np.full(model.out_dim, x.sum() * 0.7 + 0.3) + 0.1 * rng.normal(size=model.out_dim)
    if spec.loss == "bce":
        return x * u + o, (y > 0).astype(float)
    return x * u + o, y * u + o


def _tolerance(
    spec: StreamSpec, steps: int, horizon: int | None, squared: bool = False, scale: float = SCALE
) -> Tolerance:
    """The comparison's tolerance after ``steps`` steps of the stream; a long run passes the stream's memory
    as ``horizon``, past which differences no longer accumulate. ``scale``: the magnitude of the values the
    compared quantity is computed from (the data's, for what is in the user's units)."""
    steps = steps if horizon is None else min(steps, horizon)
    scale = scale**2 if squared else scale
    return tolerance(spec.dtype, ops=step_ops(spec.model) + NORM_OPS, steps=steps + 1, scale=scale)


def _magnitudes(units: Units) -> tuple[float, float]:
    """Magnitudes of the values in the user's units, and of the standardised ones' rounding (a z-score of
    values at an offset carries the offset's rounding, relative to the scale)."""
    u, o = units
    return SCALE * u + o, SCALE * (1 + o / u)


def _close(actual: list[float] | None, expected: list[float] | None, tol: Tolerance, what: str) -> None:
    assert (actual is None) == (expected is None), f"{what}: {actual} vs {expected}"
    if actual is not None and expected is not None:
        torch.testing.assert_close(
            torch.tensor(actual, dtype=torch.float64),
            torch.tensor(expected, dtype=torch.float64),
            **tol,
            msg=what,
        )


def assert_same_outcome(
    item: ItemResult, ref: Outcome, spec: StreamSpec, where: str, horizon: int | None, units: Units = UNIT
) -> None:
    assert (item.step, item.applied, item.warming, item.nonfinite) == (
        ref.step,
        ref.applied,
        ref.warming,
        ref.nonfinite,
    ), where
    user, _ = _magnitudes(units)
    tol = _tolerance(spec, ref.step, horizon, scale=user)
    _close(item.prediction, ref.prediction, tol, f"{where} prediction")
    _close(
        [item.loss] if item.loss is not None else None,
        [ref.loss] if ref.loss is not None else None,
        _tolerance(spec, ref.step, horizon, squared=spec.loss != "bce", scale=user),
        f"{where} loss",
    )
    _close(item.forecast, ref.forecast, tol, f"{where} forecast")


def assert_same_state(
    engine: Engine, stream_id: str, ref: ReferenceStream, horizon: int | None = None, units: Units = UNIT
) -> None:
    exported = engine.export(stream_id)
    expected = ref.state()
    user, standardised = _magnitudes(units)
    if not ref.spec.standardize:
        standardised = user
    for key, value in exported.items():
        if not key.startswith(("param/", "opt/", "norm/", "mix/")) or (
            ref.spec.tracking and key[:4] == "mix/"
        ):
            continue
        want = expected.get(key, torch.zeros_like(value))  # optimizer state is created lazily by the class
        if key == "opt/step":
            assert int(value) == int(want), f"{stream_id} {key}"
        else:
            scale = user if key.startswith(("norm/", "mix/")) else standardised
            squared = key in SQUARED or key.endswith("_var")
            tol = _tolerance(ref.spec, ref.steps, horizon, squared=squared, scale=scale)
            torch.testing.assert_close(value, want.to(value.dtype), **tol, msg=f"{stream_id} {key}")


def run_both(
    specs: list[StreamSpec],
    batches: list[list[int]],
    seed: int,
    *,
    horizon: int | None = None,
    rounding: OtherRounding | None = None,
    units: Units = UNIT,
    kernels: Kernels = "auto",
) -> tuple[Engine, list[ReferenceStream]]:
    """Feed the same observations to an engine (with ``kernels``) and to the references (rounding as another
    CPU would, with ``rounding``), checking every answer."""
    engine = Engine(kernels=kernels)
    refs = [ReferenceStream(spec) for spec in specs]
    for k, spec in enumerate(specs):
        engine.add(f"s{k}", spec)
    rng = np.random.default_rng(seed)
    for b, batch in enumerate(batches):
        data = [_data(specs[k], rng, units) for k in batch]
        results = engine.observe([f"s{k}" for k in batch], [d[0] for d in data], [d[1] for d in data])
        for j, (k, (x, y), item) in enumerate(zip(batch, data, results, strict=True)):
            target = torch.from_numpy(y) if y is not None else None
            with rounding if rounding is not None else contextlib.nullcontext():
                expected = refs[k].observe(torch.from_numpy(x), target)
            where = f"batch {b} item {j} stream {k}"
            assert_same_outcome(item, expected, specs[k], where, horizon, units)
    return engine, refs


def _fused(case: Case) -> bool:
    """The case's pool runs the fused CPU kernel by default (a first-order closed-form pool)."""
    cls = {"trackin": TrackInSpec, "sgd": SGDSpec, "adam": AdamSpec}[case.optimizer]
    spec = StreamSpec(
        model=case.model,
        loss=case.loss,  # type: ignore[arg-type]
        optimizer=cls(**(case.options or {})),
        dtype=case.dtype,  # type: ignore[arg-type]
        standardize=case.standardize,
    )
    engine = Engine()
    engine.add("probe", spec)
    return engine.locate("probe").pool.fused


# Every case with the default kernels (fused where they apply); the fused cases also with the torch rounds;
# float32 cases also against a reference that rounds as another CPU would.
TABLE = (
    [pytest.param(c, None, "auto", id=c.name) for c in CASES]
    + [pytest.param(c, None, "torch", id=f"{c.name}-torch") for c in CASES if _fused(c)]
    + [pytest.param(c, 1, "auto", id=f"{c.name}-other-cpu") for c in CASES if c.dtype == "float32"]
)


@pytest.mark.parametrize(("case", "ulps", "kernels"), TABLE)
@SETTINGS
@given(data=st.data())
def test_engine_equals_reference(case: Case, ulps: int | None, kernels: Kernels, data: st.DataObject) -> None:
    """``-other-cpu``: the reference rounds every float op differently, as another CPU's kernels may;
    ``-torch``: the engine steps with the torch rounds instead of the fused kernel."""
    specs, batches, seed = data.draw(scenarios(case))
    rounding = OtherRounding(seed, ulps) if ulps is not None else None
    engine, refs = run_both(specs, batches, seed, rounding=rounding, units=case.units, kernels=kernels)
    for k, ref in enumerate(refs):
        assert_same_state(engine, f"s{k}", ref, units=case.units)


LONG_RUN = [
    StreamSpec(
        model=LIN, optimizer=TrackInSpec(beta_rule=rule, lr=lr, eta=0.02, precondition="none")
    )  # the first-order path (the tracking path: tests/models/test_tracking.py)
    for rule, lr in (("cos", 0.05), ("norm", 0.1), ("constant", 0.02))
]
# The streams forget a difference within their slowest average (momentum gamma = 0.98: 50 steps) or their
# gradient steps (lr = 0.02: 25 steps); past that horizon differences stop accumulating
# (tests.support.tolerances).
LONG_RUN_MEMORY = memory(
    decays=tuple(d for s in LONG_RUN for d in (s.optimizer.gamma, s.optimizer.eps_decay)),
    lrs=tuple(s.optimizer.lr for s in LONG_RUN),
)


def _long_run(rounding: OtherRounding | None, kernels: Kernels = "auto") -> None:
    rng = np.random.default_rng(7)
    batches = [list(rng.integers(0, 3, size=40)) for _ in range(15)]  # about 200 steps per stream
    engine, refs = run_both(LONG_RUN, batches, 3, horizon=LONG_RUN_MEMORY, rounding=rounding, kernels=kernels)
    assert rounding is None or rounding.moved > 10 * len(batches)
    for k, ref in enumerate(refs):
        assert ref.steps > 3 * LONG_RUN_MEMORY
        assert_same_state(engine, f"s{k}", ref, horizon=LONG_RUN_MEMORY)


@pytest.mark.parametrize(
    ("ulps", "kernels"), [(None, "auto"), (None, "torch"), (1, "auto")], ids=["native", "torch", "other-cpu"]
)
def test_long_run_stays_equal(ulps: int | None, kernels: Kernels) -> None:
    """Many float32 steps of mixed streams, well past their memory: differences do not grow past the tolerance
    of the memory's steps, also when the reference rounds every op differently (another CPU), with the fused
    kernel (the default) and with the torch rounds."""
    _long_run(OtherRounding(0, ulps) if ulps is not None else None, kernels)


def test_long_run_tolerance_notices_lower_precision() -> None:
    """The float32 tolerance is no blanket: a reference whose every op is off by 2**10 ulps (about 2**-13
    relative, still eight times finer than float16) fails the same comparison."""
    with pytest.raises(AssertionError):
        _long_run(OtherRounding(0, 2**10))


def test_mixed_pools_in_one_batch() -> None:
    """A batch spanning several pools (families, optimizers, dtypes) is answered in order."""
    specs = [
        StreamSpec(model=LIN),
        StreamSpec(model=MLP_TANH, optimizer=AdamSpec()),
        StreamSpec(model=ARModel(lags=2), optimizer=SGDSpec(momentum=0.5)),
        StreamSpec(model=LIN, dtype="float32", loss="huber"),
    ]
    engine, refs = run_both(specs, [[0, 1, 2, 3, 2, 2, 0, 1, 2, 3, 2, 1, 0]] * 3, 11)
    assert len(engine.pools) == 4
    for k, ref in enumerate(refs):
        assert_same_state(engine, f"s{k}", ref)


def test_predict_does_not_learn() -> None:
    engine = Engine()
    engine.add("a", StreamSpec(model=LIN))
    engine.add("r", StreamSpec(model=ARModel(lags=2, target="level")))
    before = engine.export("a")
    x = np.array([1.0, 2.0, 3.0])
    (first,) = engine.predict(["a"], [x])
    assert engine.predict(["a"], [x]) == [first]
    assert all(torch.equal(before[k], v) for k, v in engine.export("a").items() if not v.isnan().any())
    (outcome,) = engine.observe(["a"], [x], [np.array([1.0])])
    # predict and observe compute the output in their own code (float32): equal up to one evaluation's
    # rounding
    tol = _tolerance(StreamSpec(model=LIN), 0, None)
    assert outcome.prediction == pytest.approx(first, rel=tol["rtol"], abs=tol["atol"])
    assert engine.predict(["r"], [None]) == [None]
    for v in (1.0, 2.0):
        engine.observe(["r"], [np.array([v])], [None])
    (forecast,) = engine.predict(["r"], [None])
    assert forecast is not None
    (scored,) = engine.observe(["r"], [np.array([3.0])], [None])
    tol = _tolerance(StreamSpec(model=ARModel(lags=2, target="level")), 0, None)
    assert scored.prediction == pytest.approx(forecast, rel=tol["rtol"], abs=tol["atol"])


def test_unknown_and_duplicate_streams() -> None:
    engine = Engine()
    spec = StreamSpec(model=LIN, drift=DriftSpec(enabled=False))
    engine.add("a", spec)
    with pytest.raises(ValueError, match="already exists"):
        engine.add("a", spec)
    with pytest.raises(UnknownStreamError):
        engine.observe(["b"], [np.zeros(3)], [np.zeros(1)])
    with pytest.raises(UnknownStreamError):
        engine.remove("b")
    engine.remove("a")
    assert "a" not in engine
    assert len(engine) == 0


def test_ids_share_equal_specs_and_free_them() -> None:
    engine = Engine()
    first = StreamSpec(model=LIN)
    engine.add("a", first)
    engine.add("b", StreamSpec(model=LIN))  # equal, not the same object
    assert engine.locate("b").spec is first
    other = StreamSpec(model=LIN, optimizer=TrackInSpec(lr=0.01))
    engine.add("c", other)
    assert engine.locate("c").pool is engine.locate("a").pool
    for stream_id in ("a", "b", "c"):
        engine.remove(stream_id)
    assert not engine._entry_of
    engine.add("d", other)
    location = engine.locate("d")
    assert location.spec is other
    assert location.slot in range(location.pool.capacity)
    (result,) = engine.observe(["d"], [np.ones(3)], [np.ones(1)])
    assert result.step == 1
