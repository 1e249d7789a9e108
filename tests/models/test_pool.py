"""StreamPool's guarantees beyond equality with the reference: isolation, non-finite handling, ``ar`` warming,
slots, growth, checkpoints and drift detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from tests.models.reference import ReferenceStream
from tests.support.tolerances import step_ops, tolerance
from trackin.models.kernels import Kernels
from trackin.models.pool import StreamPool, _occurrence_rounds
from trackin.models.specs import ARModel, DriftSpec, LinearModel, MLPModel, SGDSpec, StreamSpec, TrackInSpec

# The first-order path (the tracking path has its own tests: tests/models/test_tracking.py).
FIRST_ORDER = TrackInSpec(precondition="none")
LIN = StreamSpec(
    model=LinearModel(in_dim=3, init="random"), optimizer=TrackInSpec(eta=0.05, precondition="none")
)
MLP = StreamSpec(model=MLPModel(in_dim=3, hidden=(4,)), optimizer=TrackInSpec(eta=0.05), loss="huber")
AR = StreamSpec(model=ARModel(lags=3, target="level"), optimizer=FIRST_ORDER, dtype="float64")


def bits(t: Tensor) -> Tensor:
    """The tensor's bytes, so NaN compares equal to the same NaN (bit-for-bit checks)."""
    return t.detach().contiguous().view(-1).view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def same_bits(a: dict[str, Tensor], b: dict[str, Tensor], skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key not in skip:
            assert torch.equal(bits(a[key]), bits(b[key])), key


def feed(pool: StreamPool, slots: list[int], seed: int, in_dim: int = 3) -> None:
    """A batch of observations of a noisy linear target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(slots), in_dim, generator=g, dtype=torch.float64)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(len(slots), 1, generator=g, dtype=torch.float64)
    pool.observe(np.array(slots), x, y)


def exports(pool: StreamPool, slots: list[int]) -> list[dict[str, Tensor]]:
    return [pool.export(s) for s in slots]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=64))
def test_rounds_hold_each_stream_once_in_arrival_order(slots: list[int]) -> None:
    array = np.array(slots, dtype=np.int64)
    rounds = _occurrence_rounds(array)
    assert sorted(np.concatenate(rounds).tolist() if rounds else []) == list(range(len(slots)))
    for positions in rounds:
        assert len(set(array[positions].tolist())) == len(positions)
    # the k-th occurrence of a stream is in round k
    seen: dict[int, int] = {}
    where = {int(p): r for r, positions in enumerate(rounds) for p in positions}
    for p, s in enumerate(slots):
        assert where[p] == seen.get(s, 0)
        seen[s] = seen.get(s, 0) + 1


@pytest.mark.parametrize("spec", [LIN, MLP], ids=["linear", "mlp"])
def test_streams_outside_the_batch_are_untouched(spec: StreamSpec) -> None:
    pool = StreamPool(spec)
    slots = [pool.add(spec) for _ in range(6)]
    feed(pool, slots * 3, 0)  # every stream has momentum and eps now
    before = exports(pool, slots)
    feed(pool, [slots[1], slots[3], slots[1]], 1)
    after = exports(pool, slots)
    for k in (0, 2, 4, 5):
        same_bits(before[k], after[k])
    assert int(after[1]["opt/step"]) == int(before[1]["opt/step"]) + 2


@pytest.mark.parametrize("spec", [LIN, MLP], ids=["linear", "mlp"])
@pytest.mark.parametrize("bad", ["nan-input", "inf-target", "huge-input"])
def test_nonfinite_leaves_the_stream_as_it_was(spec: StreamSpec, bad: str) -> None:
    def run(row: str) -> tuple[StreamPool, list[int], object]:
        """Stream 1's observation is ``bad``, an ordinary one (``finite``), or not sent (``absent``)."""
        pool = StreamPool(spec)
        slots = [pool.add(spec) for _ in range(4)]
        feed(pool, slots * 2, 0)
        batch = [0, 2, 3, 2] if row == "absent" else [0, 1, 2, 3, 2]
        x = torch.arange(15, dtype=torch.float64).view(5, 3) / 10
        y = torch.ones(5, 1, dtype=torch.float64)
        if row == "bad":
            if bad == "nan-input":
                x[1, 0] = torch.nan
            elif bad == "inf-target":
                y[1, 0] = torch.inf
            else:
                x[1] = 1e300  # finite input, overflowing loss
        elif row == "absent":
            keep = [0, 2, 3, 4]
            x, y = x[keep], y[keep]
        before = pool.export(slots[1])
        result = pool.observe(np.array(batch), x, y)
        return pool, slots, (before, result)

    pool, slots, (before, result) = run("bad")
    assert result.nonfinite.tolist() == [False, True, False, False, False]  # type: ignore[attr-defined]
    assert result.applied.tolist() == [True, False, True, True, True]  # type: ignore[attr-defined]
    after = pool.export(slots[1])
    same_bits(before, after, skip=("fig/nonfinite",))  # type: ignore[arg-type]
    assert int(after["fig/nonfinite"]) == 1
    # The other rows of the same batch shape (the same kernels) are those of a batch without the bad value...
    finite, _, _ = run("finite")
    for k in (0, 2, 3):
        same_bits(pool.export(slots[k]), finite.export(slots[k]))
    # ... and equal those of a batch without stream 1, up to rounding: a batch of other rows may pick other
    # kernels (vector body or scalar tail) on some CPUs.
    absent, _, _ = run("absent")
    tol = tolerance(spec.dtype, ops=step_ops(spec.model), steps=3, scale=8.0)  # |x|, |y| < 8
    for k in (0, 2, 3):
        for key, value in absent.export(slots[k]).items():
            torch.testing.assert_close(pool.export(slots[k])[key], value, **tol, equal_nan=True, msg=key)


def test_ar_warming_then_scoring_the_old_forecast() -> None:
    pool = StreamPool(AR)
    slot = pool.add(AR)
    ref = ReferenceStream(AR)
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    forecasts = []
    for t, v in enumerate(values):
        r = pool.observe(np.array([slot]), torch.tensor([[v]], dtype=torch.float64))
        expected = ref.observe(torch.tensor([v], dtype=torch.float64))
        warming = t < 3
        assert bool(r.warming[0]) is warming
        assert bool(r.applied[0]) is (not warming)
        assert int(r.steps[0]) == max(0, t - 2)
        assert r.forecasts is not None
        if t < 2:
            assert r.forecasts[0].isnan().all()  # window not full yet: no forecast
            assert pool.predict(np.array([slot]))[0].isnan().all()
        else:
            assert expected.forecast is not None
            assert r.forecasts[0].tolist() == pytest.approx(expected.forecast, rel=1e-12)
        if warming:
            assert r.predictions[0].isnan().all()
            assert r.losses[0].isnan()
        else:
            # the arriving value scores the forecast made before it arrived, then enters the window
            assert r.predictions[0].tolist() == pytest.approx(forecasts[-1], rel=1e-12)
            assert float(r.losses[0]) == pytest.approx((v - forecasts[-1][0]) ** 2, rel=1e-12)
            assert pool.state["ar/window"][slot, -1, 0] == v
        forecasts.append(r.forecasts[0].tolist())


def test_ar_nonfinite_value() -> None:
    pool = StreamPool(AR)
    slot = pool.add(AR)
    nan = torch.tensor([[torch.nan]], dtype=torch.float64)
    r = pool.observe(np.array([slot]), nan)
    assert bool(r.warming[0])
    assert bool(r.nonfinite[0])
    assert int(pool.state["ar/filled"][slot]) == 0
    for v in (1.0, 2.0, 3.0):
        pool.observe(np.array([slot]), torch.tensor([[v]], dtype=torch.float64))
    before = pool.export(slot)
    r = pool.observe(np.array([slot]), nan)
    assert bool(r.nonfinite[0])
    assert not bool(r.applied[0])
    assert not bool(r.warming[0])
    assert r.forecasts is not None
    assert not r.forecasts[0].isnan().any()
    same_bits(before, pool.export(slot), skip=("fig/nonfinite",))


def test_removed_slot_is_reused_and_starts_fresh() -> None:
    pool = StreamPool(LIN)
    a = pool.add(LIN)
    b = pool.add(LIN)
    feed(pool, [a, b, a], 0)
    pool.remove(a)
    other = LIN.model_copy(
        update={"optimizer": TrackInSpec(eta=0.1, lr=0.01, precondition="none"), "huber_delta": 2.0}
    )
    c = pool.add(other)
    assert c == a
    fresh = StreamPool(other)
    same_bits(pool.export(c), fresh.export(fresh.add(other)))
    with pytest.raises(KeyError):
        pool.remove(pool.capacity + 3)
    pool.remove(b)
    with pytest.raises(KeyError):
        pool.remove(b)


def test_growth_by_doubling_keeps_states() -> None:
    small = StreamPool(LIN, capacity=1)
    large = StreamPool(LIN, capacity=64)
    slots: list[int] = []
    for k in range(9):
        slots.append(small.add(LIN))
        assert large.add(LIN) == slots[-1]
        feed(small, slots, k)
        feed(large, slots, k)
    assert small.capacity == 16
    assert small.size == 9
    for s in slots:
        same_bits(small.export(s), large.export(s))
    assert small.state["param/weight0"].data_ptr() == small._packed.buffers[0].data_ptr()


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_free_rows_are_never_read(kernels: Kernels) -> None:
    """Growth leaves new rows unwritten (``PackedState.grow``): a stream placed in one (one at a time, or
    many restored at once) and the fleet's figures must not depend on what such a row held."""
    clean = StreamPool(LIN, capacity=1, kernels=kernels)
    poisoned = StreamPool(LIN, capacity=1, kernels=kernels)
    donor = StreamPool(LIN, capacity=4, kernels=kernels)
    donor_slots = [donor.add(LIN) for _ in range(4)]
    feed(donor, donor_slots, 99)
    restored = donor.export_rows(np.array(donor_slots))
    for pool in (clean, poisoned):
        pool._packed.grow(16)
        pool._free.extend(range(15, 0, -1))
    for buffer in poisoned._packed.buffers:  # what a reused allocation may hold
        buffer.fill_(7)
    poisoned._packed.buffers[0].fill_(float("nan"))
    outcomes = []
    for pool in (clean, poisoned):
        slots = [pool.add(LIN) for _ in range(5)]
        slots += pool.add_rows(LIN, restored).tolist()
        feed(pool, slots, 7)
        outcomes.append((exports(pool, slots), pool.fleet_rows()))
    (states, fleet), (poisoned_states, poisoned_fleet) = outcomes
    for a, b in zip(states, poisoned_states, strict=True):
        same_bits(a, b)
    assert fleet.shape[0] == 9
    assert torch.equal(bits(fleet), bits(poisoned_fleet))


@pytest.mark.parametrize("spec", [LIN, MLP, AR, StreamSpec(model=LinearModel(in_dim=3), optimizer=SGDSpec())])
def test_export_load_round_trip_continues_bit_for_bit(spec: StreamSpec) -> None:
    def step(pool: StreamPool, slot: int, k: int) -> None:
        if isinstance(spec.model, ARModel):
            pool.observe(
                np.array([slot, slot]), torch.tensor([[k * 0.3], [1 - k * 0.1]], dtype=torch.float64)
            )
        else:
            feed(pool, [slot, slot], k)

    original = StreamPool(spec)
    slot = original.add(spec)
    for k in range(6):
        step(original, slot, k)
    saved = original.export(slot)
    restored = StreamPool(spec)
    restored.add(spec)
    other = restored.add(spec)
    restored.load(other, saved)
    same_bits(restored.export(other), saved)
    for k in range(6, 12):
        step(original, slot, k)
        step(restored, other, k)
    same_bits(original.export(slot), restored.export(other))
    with pytest.raises(KeyError):
        restored.load(other, {k: v for k, v in saved.items() if k != "opt/step"})
    with pytest.raises(ValueError, match="shape"):
        restored.load(other, {**saved, "param/bias0": torch.zeros(7)})


def test_loaded_settings_switch_between_shared_and_per_stream_paths() -> None:
    """Loading a stream with other hyperparameters makes the pool use per-stream columns, and back."""
    slow = LIN.model_copy(
        update={"optimizer": TrackInSpec(eta=0.05, lr=0.01, beta_rule="norm", precondition="none")}
    )
    pool = StreamPool(LIN)
    a, b = pool.add(LIN), pool.add(LIN)
    donor = StreamPool(slow)
    pool.load(b, donor.export(donor.add(slow)))
    refs = {a: ReferenceStream(LIN), b: ReferenceStream(slow)}
    g = torch.Generator().manual_seed(0)
    for round_ in range(8):
        if round_ == 4:
            pool.remove(b)  # the pool is uniform again
            del refs[b]
        slots = list(refs)
        x = torch.randn(len(slots), 3, generator=g, dtype=torch.float64)
        y = x.sum(1, keepdim=True)
        r = pool.observe(np.array(slots), x, y)
        for j, s in enumerate(slots):
            expected = refs[s].observe(x[j], y[j])
            # float32, pool against reference: equal up to rounding; |x|, |y| < 8 and the loss is a square
            tol = tolerance(LIN.dtype, ops=step_ops(LIN.model), steps=expected.step, scale=8.0**2)
            assert float(r.losses[j]) == pytest.approx(expected.loss, rel=tol["rtol"], abs=tol["atol"])
    tol = tolerance(LIN.dtype, ops=step_ops(LIN.model), steps=8, scale=8.0)
    torch.testing.assert_close(pool.export(a)["param/weight0"], refs[a].state()["param/weight0"], **tol)


def test_empty_batch_and_wrong_spec() -> None:
    pool = StreamPool(LIN)
    pool.add(LIN)
    r = pool.observe(np.array([], dtype=np.int64), torch.zeros(0, 3), torch.zeros(0, 1))
    assert r.predictions.shape == (0, 1)
    assert r.steps.shape == (0,)
    with pytest.raises(ValueError, match="pool"):
        pool.add(StreamSpec(model=LinearModel(in_dim=4), optimizer=FIRST_ORDER))


def test_drift_resets_momentum_when_asked() -> None:
    spec = StreamSpec(
        model=LinearModel(in_dim=1),
        optimizer=TrackInSpec(lr=0.01, precondition="none"),
        drift=DriftSpec(warmup=5, reset_momentum=True),
    )
    pool = StreamPool(spec)
    slot = pool.add(spec)
    x = torch.ones(1, 1, dtype=torch.float64)
    for k in range(50):
        noise = 0.1 * ((-1) ** k)
        pool.observe(np.array([slot]), x, torch.tensor([[1.0 + noise]], dtype=torch.float64))
    r = pool.observe(np.array([slot]), x, torch.tensor([[100.0]], dtype=torch.float64))
    assert bool(r.drift[0])
    assert pool.state["opt/momentum/weight0"][slot].abs().sum() == 0
    assert int(pool.state["drift/count"][slot]) == 1
    assert int(pool.state["drift/last_step"][slot]) == int(r.steps[0])


def test_drift_flags_jumps_quickly_and_stationary_streams_never() -> None:
    """Default detector, one batched run: 200 stationary streams x 5,000 steps, and 100 streams whose target
    jumps by 8 noise standard deviations halfway (docs/engine.md has the measured rates)."""
    stationary, jumping, steps, jump_at = 200, 100, 5000, 2500
    spec = StreamSpec(model=LinearModel(in_dim=4), optimizer=FIRST_ORDER)
    pool = StreamPool(spec, capacity=stationary + jumping)
    slots = np.array([pool.add(spec) for _ in range(stationary + jumping)])
    g = torch.Generator().manual_seed(0)
    w = torch.randn(len(slots), 4, generator=g)
    c = torch.randn(len(slots), generator=g)
    jump = torch.zeros(len(slots))
    jump[stationary:] = 8.0
    alarms = torch.zeros(steps, len(slots), dtype=torch.bool)
    for t in range(steps):
        x = torch.randn(len(slots), 4, generator=g)
        y = (x * w).sum(1) + c + torch.randn(len(slots), generator=g) + (jump if t >= jump_at else 0)
        alarms[t] = pool.observe(slots, x, y.unsqueeze(1)).drift
    assert not alarms[:, :stationary].any()
    assert not alarms[:jump_at, stationary:].any()
    after = alarms[jump_at:, stationary:]
    assert after[:10].any(0).all()  # every jump flagged within 10 observations
    assert int(pool.state["drift/count"][slots[stationary:]].min()) >= 1


@pytest.mark.parametrize("spec", [LIN, MLP, AR], ids=["linear", "mlp", "ar"])
def test_sync_free_restore_equals_the_cpu_restore(spec: StreamSpec) -> None:
    """On accelerators failed rows are restored without a host sync (two copies of the rows): same bits."""
    pools = [StreamPool(spec), StreamPool(spec)]
    pools[1]._sync_free = True
    g = torch.Generator().manual_seed(3)
    dim = 1 if isinstance(spec.model, ARModel) else 3
    for pool in pools:
        for _ in range(4):
            pool.add(spec)
    for k in range(6):
        x = torch.randn(6, dim, generator=g, dtype=torch.float64)
        x[k % 6, 0] = torch.nan  # one failed row per batch
        y = x.sum(1, keepdim=True).nan_to_num()
        slots = np.array([0, 1, 2, 3, 1, 0])
        results = [p.observe(slots, x, None if dim == 1 else y) for p in pools]
        assert torch.equal(results[0].applied, results[1].applied)
        assert torch.equal(bits(results[0].losses), bits(results[1].losses))
    for slot in range(4):
        same_bits(pools[0].export(slot), pools[1].export(slot))


RAW_FIRST_ORDER = StreamSpec.model_validate(
    {
        "model": {"family": "linear", "in_dim": 3, "init": "random"},
        "optimizer": {"precondition": "none"},
        "standardize": False,
        "mix_naive": False,
    }
)
DEFAULT_TRACKING = StreamSpec(model=LinearModel(in_dim=3))


@pytest.mark.parametrize(
    ("spec", "kernels", "fused"),
    [
        (DEFAULT_TRACKING, "auto", True),
        (RAW_FIRST_ORDER, "auto", True),
        (LIN, "torch", False),
        (AR, "auto", True),
        (AR, "torch", False),
    ],
    ids=["tracking-kernel", "first-order-kernel", "torch-round", "ar-first-order-kernel", "ar-torch-round"],
)
def test_observe_host_equals_observe(spec: StreamSpec, kernels: Kernels, fused: bool) -> None:
    """The NumPy entry point is the tensor API without the tensors: same outcomes, same state, bit for bit
    (repeats of a stream in one batch included)."""
    tensors, arrays = StreamPool(spec, kernels=kernels), StreamPool(spec, kernels=kernels)
    assert tensors.fused is fused
    slots = [tensors.add(spec) for _ in range(4)]
    assert [arrays.add(spec) for _ in range(4)] == slots
    rng = np.random.default_rng(3)
    series = spec is AR
    for _ in range(5):
        who = np.array(rng.choice(slots, size=6))
        x = rng.normal(size=(6, 1 if series else 3))
        y = None if series else x.sum(1, keepdims=True) + 0.1 * rng.normal(size=(6, 1))
        want = tensors.observe(who, torch.from_numpy(x), None if y is None else torch.from_numpy(y))
        got = arrays.observe_host(who, x, y)
        for name, value in want._asdict().items():
            other = getattr(got, name)
            assert (value is None) == (other is None), name
            if value is not None:
                assert isinstance(other, np.ndarray), name
                np.testing.assert_array_equal(other, value.numpy(), err_msg=name)
    for s in slots:
        same_bits(tensors.export(s), arrays.export(s))
