"""The fused tracking kernel (models/fused_tracking*.py) against the torch TrackingRound: every outcome and
every state key, with the hyperparameters differing per stream within one pool (each beta rule, debias,
weight decay, clipping, eps, Huber's delta, drift settings with alarms and momentum resets), batches with
repeats, non-finite values, time gaps and times that go back, and a pool that grows mid-run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.tolerances import memory, tolerance
from trackin.models import fused_tracking, kernel_threads
from trackin.models.fused_tracking import FusedTrackingRound, slot_order, warm_up
from trackin.models.fused_tracking_kernel import (
    K_PREFETCH,
    _cov_update,
    _p_phi,
    slot_order_into,
    tracking_predict,
    tracking_round,
)
from trackin.models.kernel_threads import split_batch
from trackin.models.kernels import fused_applies
from trackin.models.pool import ObserveResult, StreamPool
from trackin.models.specs import StreamSpec
from trackin.models.tracking import HEAD_RHO
from trackin.models.tracking_round import TrackingRound

CASES: dict[str, dict[str, Any]] = {
    "linear": {"model": {"family": "linear", "in_dim": 3, "out_dim": 2}},
    "linear-huber-eps": {
        "model": {"family": "linear", "in_dim": 2},
        "loss": "huber",
        "optimizer": {"eta": 0.01, "eps_decay": 0.8},
    },
    "ar-delta-raw-nomix": {
        "model": {"family": "ar", "dim": 1, "lags": 3},
        "standardize": False,
        "mix_naive": False,
        "optimizer": {"forget": 0.99},
    },
    "ar-level": {"model": {"family": "ar", "dim": 2, "lags": 2, "target": "level"}},
    "track": {"model": {"family": "track", "dim": 4, "lags": 2}},
    "linear-16": {"model": {"family": "linear", "in_dim": 16}},  # the default width: 17 features, 5 heads
}
OPTIMIZERS: list[dict[str, Any]] = [
    {},
    {"beta_rule": "constant", "lr": 0.5},
    {"beta_rule": "norm", "debias": False},
    {"weight_decay": 0.01, "gamma": 0.9},
    {"max_grad_norm": 0.05},
    {"beta_rule": "norm", "max_grad_norm": 0.5, "weight_decay": 0.001, "beta": 2.0},
]
DRIFTS: list[dict[str, Any]] = [
    {"warmup": 3, "threshold": 0.5, "delta": 0.0, "reset_momentum": True},
    {"enabled": False},
    {},
    {"warmup": 5, "threshold": 2.0, "delta": 0.5},
]
STREAMS = len(OPTIMIZERS)


def _specs(name: str, dtype: str) -> list[StreamSpec]:
    base = CASES[name]
    specs = []
    for k, opt in enumerate(OPTIMIZERS):
        body = {
            **base,
            "dtype": dtype,
            "optimizer": {**base.get("optimizer", {}), **opt},
            "drift": DRIFTS[k % len(DRIFTS)],
            "huber_delta": 0.5 + k,
        }
        specs.append(StreamSpec.model_validate(body))
    return specs


def _batch(
    spec: StreamSpec, rng: np.random.Generator, t: int, clocks: np.ndarray
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Slots (repeats likely), inputs, targets (linear) and times (series) of one batch."""
    who = rng.integers(0, STREAMS, size=int(rng.integers(1, 9)))
    model = spec.model
    regime = 1.0 if t < 60 else -3.0  # a jump halfway: the drift detectors fire
    if model.family == "linear":
        x = rng.normal(size=(who.size, model.in_dim)) * 20
        y = regime * x[:, : model.out_dim] * 0.3 + rng.normal(size=(who.size, model.out_dim))
        x[rng.random(who.size) < 0.05, 0] = np.nan
        y[rng.random(who.size) < 0.03, 0] = np.inf
        return who, torch.from_numpy(x), torch.from_numpy(y), None
    clocks[who] += rng.choice([1.0, 1.0, 2.0, 5.0], size=who.size)
    times = clocks[who].copy()
    times[rng.random(who.size) < 0.05] = np.nan  # one unit after the previous value
    times[rng.random(who.size) < 0.03] = 0.0  # not after the previous value: refused
    values = 500 + regime * 3.0 * times[:, None] + rng.normal(size=(who.size, model.dim)).cumsum(1)
    values[rng.random(who.size) < 0.05, 0] = np.inf
    return who, torch.from_numpy(values), None, torch.from_numpy(times)


SENSITIVITY = 8
"""How many times the torch round's own sensitivity (its change when each input moves by an ulp) the two
paths may differ beyond the rounding tolerance: their rounding differs in many operations, each a
perturbation of about an ulp."""


def _assert_same(
    got: Any,
    want: Any,
    tol: dict[str, float],
    msg: str,
    moved: Any = None,
    seen: dict[str, float] | None = None,
) -> None:
    """``moved``: the torch round's value on inputs moved by an ulp; ``atol`` widens by ``SENSITIVITY`` times
    the largest difference from ``want`` it has shown so far in the run (kept in ``seen`` under ``msg``'s
    key: one step's is one draw of the noise).

    Rounding made in one step can be amplified by later ones: a head of forgetting factor 0.8 remembers
    about five observations of the nine ``track`` features, so its covariance is ill-conditioned and its
    rounding grows by up to ``1 / 0.8`` per step. In the ``track`` case the torch round moves its covariance
    by 4e-11 (float64) at step 112 when its inputs move by an ulp, and the kernel's differs from it by
    3e-11 (``PRIOR`` 0.1) or 6e-11 (``PRIOR`` 0.3): as much as the problem's own sensitivity, so rounding
    (the float32 difference is the float64 one times the ratio of the epsilons), beyond the fixed
    tolerance (4.4e-11). A difference in the math is orders of magnitude above both."""
    if got.dtype in (torch.bool, torch.int64):
        assert torch.equal(got, want), msg
        return
    if moved is not None:
        spread = (moved - want).abs().nan_to_num(0.0, 0.0, 0.0)
        largest = float(spread.max()) if spread.numel() else 0.0
        if seen is not None:
            key = msg.split(": ")[-1]
            largest = seen[key] = max(seen.get(key, 0.0), largest)
        tol = {**tol, "atol": tol["atol"] + SENSITIVITY * largest}
    torch.testing.assert_close(got, want, **tol, equal_nan=True, msg=lambda m: f"{msg}: {m}")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_equals_torch_round(name: str, dtype: str) -> None:
    specs = _specs(name, dtype)
    # "moved": the torch round on inputs moved by an ulp each, up or down at random (a common factor would
    # vanish in the scales), which measures how much the data amplify rounding
    pools = {k: StreamPool(specs[0], capacity=2, kernels=k) for k in ("auto", "torch")}  # type: ignore[arg-type]
    pools["moved"] = StreamPool(specs[0], capacity=2, kernels="torch")
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert isinstance(pools["auto"]._round, FusedTrackingRound)
    assert type(pools["torch"]._round) is TrackingRound
    slots = {k: [p.add(s) for s in specs[:3]] for k, p in pools.items()}  # the rest arrive mid-run
    rng = np.random.default_rng(len(name) + len(dtype))
    signs = np.random.default_rng(7)
    seen: dict[str, float] = {}  # per compared quantity: the largest difference "moved" has shown
    clocks = np.zeros(STREAMS)
    # float32: the torch round rounds every op to float32, the kernel computes in float64; a difference
    # made at one step is forgotten over the slowest average's memory (momentum gamma 0.98, mix rho 0.99,
    # the heads' errors HEAD_RHO 0.995, which pick the heads' shares)
    tol = tolerance(dtype, ops=100, steps=memory(decays=(0.99, HEAD_RHO)), scale=10.0)
    drifts = 0
    for t in range(120):
        if t == 20:
            for k, p in pools.items():
                slots[k] += [p.add(s) for s in specs[3:]]  # the pool grows: the kernel sees the new buffers
        who, x, y, ts = _batch(specs[0], rng, t, clocks)
        out: dict[str, ObserveResult] = {}
        for k, p in pools.items():
            s = np.array(slots[k])[who % len(slots[k])]  # before the growth: the first three
            jitter = torch.from_numpy(signs.choice([-1.0, 1.0], size=tuple(x.shape)))
            xk = x * (1 + eps * jitter) if k == "moved" else x.clone()
            out[k] = p.observe(s, xk, None if y is None else y.clone(), None if ts is None else ts.clone())
        for field in ObserveResult.__slots__:
            got, want = getattr(out["auto"], field), getattr(out["torch"], field)
            if want is None:
                assert got is None, field
                continue
            _assert_same(got, want, dict(tol), f"step {t}: {field}", getattr(out["moved"], field), seen)
        drifts += int(out["torch"].drift.sum())
        if t % 8 and t != 119:
            continue  # every state key every 8 batches: a difference in the state shows in the outcomes too
        _assert_same_predictions(pools, slots, who, x, signs, eps, dict(tol), t, seen)
        state = {k: p.state for k, p in pools.items()}
        for key, want in state["torch"].items():
            got, moved = state["auto"][key][slots["auto"]], state["moved"][key][slots["moved"]]
            _assert_same(got, want[slots["torch"]], dict(tol), f"step {t}: {key}", moved, seen)
    assert drifts > 0, "the drift detectors fired (and reset momenta)"


def _assert_two_pools_step_alike(name: str, configure: Callable[[int, np.ndarray], None]) -> None:
    """Two pools of case ``name`` (float32) take the same big batches (about 540 rows, repeats of each of
    the six streams), ``configure(k, slots)`` run before pool ``k`` steps; outcomes and state must be
    equal to the bit (one code path: only the order of independent streams may differ)."""
    specs = _specs(name, "float32")
    pools = [StreamPool(specs[0], capacity=2, kernels="auto") for _ in range(2)]
    slots = [np.array([p.add(s) for s in specs]) for p in pools]
    rng = np.random.default_rng(11)
    clocks = np.zeros(STREAMS)
    for t in range(6):
        parts = [_batch(specs[0], rng, 20 * t, clocks) for _ in range(120)]
        who = np.concatenate([part[0] for part in parts])
        x = torch.cat([part[1] for part in parts])
        y = None if parts[0][2] is None else torch.cat([part[2] for part in parts])  # type: ignore[misc]
        ts = None if parts[0][3] is None else torch.cat([part[3] for part in parts])  # type: ignore[misc]
        out = []
        for k, pool in enumerate(pools):
            configure(k, slots[k][who])
            copy = [None if v is None else v.clone() for v in (x, y, ts)]
            out.append(pool.observe(slots[k][who], copy[0], copy[1], copy[2]))  # type: ignore[arg-type]
        for field in ObserveResult.__slots__:
            got, want = getattr(out[0], field), getattr(out[1], field)
            if want is None:
                assert got is None, field
                continue
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"step {t}: {field}")
        for key, want in pools[1].state.items():
            got = pools[0].state[key][slots[0]]
            torch.testing.assert_close(got, want[slots[1]], rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("name", list(CASES))
def test_a_big_batch_stepped_in_slot_order_equals_arrival_order_to_the_bit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slot_order`: a batch of many rows is stepped by slot, each stream's rows in their order. Streams are
    independent, so outcomes and state are the arrival order's to the bit (one code path, float32 too)."""
    monkeypatch.setattr(fused_tracking, "SORT_MIN_STATE_BYTES", 0)  # these pools are tiny

    def configure(k: int, slots: np.ndarray) -> None:  # pool 1 keeps the arrival order
        monkeypatch.setattr(fused_tracking, "SORT_MIN_ROWS", 2**40 if k else 256)
        assert (slot_order(slots) is None) == bool(k), "pool 0 sorts the batch, pool 1 does not"

    _assert_two_pools_step_alike(name, configure)


@pytest.mark.parametrize("name", list(CASES))
def test_rows_stepped_with_the_next_rows_state_prefetched_equal_rows_without_to_the_bit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big pool's sparse batches are stepped with each next row's state prefetched
    (`fused_tracking.PREFETCH_SPREAD`): a hint to the caches that must change no value. Both pools step in
    slot order; pool 0 prefetches, pool 1 does not."""
    monkeypatch.setattr(fused_tracking, "SORT_MIN_STATE_BYTES", 0)  # these pools are tiny
    prefetched: list[bool] = []
    run = FusedTrackingRound.run

    def observed(self: FusedTrackingRound, *args: Any) -> Any:
        out = run(self, *args)
        prefetched.append(bool(self._cfg[K_PREFETCH]))
        return out

    monkeypatch.setattr(FusedTrackingRound, "run", observed)  # read after each call, not replaced

    def configure(k: int, slots: np.ndarray) -> None:
        monkeypatch.setattr(fused_tracking, "PREFETCH_SPREAD", 2**40 if k else 0)

    _assert_two_pools_step_alike(name, configure)
    assert prefetched == [True, False] * 6, "pool 0 prefetched every batch, pool 1 none"


@pytest.mark.parametrize("in_slot_order", [False, True], ids=["dealt", "slot-order"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_batch_split_over_threads_equals_one_thread_to_the_bit(
    name: str, in_slot_order: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more than one intra-op thread (``torch.set_num_threads``), a big batch's streams are split
    into runs stepped at once on as many threads (`split_batch`); each stream's rows stay in their order
    in one run, so outcomes and state are one thread's to the bit, dealt by slot or cut from the slot
    order."""
    monkeypatch.setattr(fused_tracking, "SORT_MIN_STATE_BYTES", 0 if in_slot_order else 2**62)
    runs: list[int] = []
    split = kernel_threads.run_split

    def observed(entry: Any, args: tuple[Any, ...], parts: list[np.ndarray]) -> None:
        runs.append(len(parts))
        split(entry, args, parts)

    monkeypatch.setattr(kernel_threads, "run_split", observed)  # counted, not replaced
    threads = torch.get_num_threads()

    def configure(k: int, slots: np.ndarray) -> None:  # pool 0 splits, pool 1 steps on one thread
        torch.set_num_threads(1 if k else 3)
        if not k:
            assert len(split_batch(slots, slot_order(slots) if in_slot_order else None, 3)) == 3

    try:
        _assert_two_pools_step_alike(name, configure)
    finally:
        torch.set_num_threads(threads)
    # every batch after the first (whose call picks the compiled overload, whole) in three runs at once
    assert runs == [3] * 5


@pytest.mark.parametrize("seed", range(6))
def test_split_batch_makes_runs_that_share_no_stream(seed: int) -> None:
    """Every row in exactly one run, no stream in two runs, each stream's rows in their order; runs cut
    from the slot order are its consecutive pieces, of near equal lengths where the streams allow."""
    rng = np.random.default_rng(seed)
    streams, rows = [2, 7, 50, 1000, 3, 400][seed], [300, 513, 1000, 4000, 256, 2048][seed]
    parts = 2 + seed % 3
    slots = rng.integers(0, streams, size=rows).astype(np.int64)
    for order in (None, np.argsort(slots, kind="stable")):
        runs = split_batch(slots, order, parts)
        assert 1 <= len(runs) <= parts
        assert all(run.size for run in runs), "an empty run would step every row"
        assert np.array_equal(np.sort(np.concatenate(runs)), np.arange(rows))
        owners = [set(slots[run].tolist()) for run in runs]
        assert sum(map(len, owners)) == len(set().union(*owners)), "a stream in two runs"
        for run in runs:
            for slot in set(slots[run].tolist()):
                mine = run[slots[run] == slot]
                assert np.all(np.diff(mine) > 0), "a stream's rows out of their order"
        if order is not None:
            assert np.array_equal(np.concatenate(runs), order), "consecutive pieces of the slot order"
            if streams >= 50:
                assert max(map(len, runs)) <= rows // parts + rows // streams * 4, "near equal lengths"


def test_a_forked_child_starts_its_own_helper_threads() -> None:
    """A process forked after runs were stepped on helper threads (a server's workers, a forkserver's
    children) has none of those threads; its split batches must still be stepped, on helpers of its own."""
    finished: list[int] = []

    def entry(run: np.ndarray) -> None:
        finished.append(int(run[0]))

    def slow(run: np.ndarray) -> None:  # keeps each helper busy, so the pool starts both
        time.sleep(0.05)

    runs = [np.array([0]), np.array([1]), np.array([2])]
    kernel_threads.run_split(slow, (), runs)  # the parent's two helpers exist now, idle
    pid = os.fork()
    if pid == 0:  # the child: exit 0 once its runs were stepped (a hang is killed by the parent)
        finished.clear()
        kernel_threads.run_split(entry, (), runs)
        os._exit(0 if sorted(finished) == [0, 1, 2] else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's split batch never finished")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_an_error_in_one_run_reaches_the_caller_after_every_run_finished() -> None:
    """The buffers are read only once every run has finished, also when the caller's own run fails."""
    finished: list[int] = []

    def entry(run: np.ndarray) -> None:
        if run[0] == 0:
            raise ValueError("the caller's run failed")
        time.sleep(0.05)
        finished.append(int(run[0]))

    with pytest.raises(ValueError, match="caller's run"):
        kernel_threads.run_split(entry, (), [np.array([0]), np.array([1]), np.array([2])])
    assert sorted(finished) == [1, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 3, 8, 9, 16, 17, 25, 33])
def test_the_covariance_loops_compile_to_what_their_python_computes(p: int, dtype: type) -> None:
    """`_p_phi` and `_cov_update`, compiled with the SLP vectoriser (numba's default turns it off after
    miscompilations), equal the interpreter's run of the same Python to the bit: NumPy scalars round each
    operation to the dtype as the compiled code must. Rows of every length about the blocks of 8."""
    rng = np.random.default_rng(p)
    a = rng.normal(size=(p, p))
    cov = ((a @ a.T) / p + np.eye(p)).astype(dtype).ravel()
    phi = (rng.normal(size=p) * 3).astype(dtype)
    inv_denom, factor = dtype(1.0 / 1.7), dtype(1.0 / 0.99)
    got_cov, want_cov = cov.copy(), cov.copy()
    got_pp, want_pp = np.zeros(p, dtype), np.zeros(p, dtype)
    for _ in range(3):
        _p_phi(got_cov, phi, got_pp, p)
        _p_phi.py_func(want_cov, phi, want_pp, p)
        assert np.array_equal(got_pp, want_pp), "P phi"
        _cov_update(got_cov, got_pp, p, inv_denom, factor)
        _cov_update.py_func(want_cov, want_pp, p, inv_denom, factor)
        assert np.array_equal(got_cov, want_cov), "the rank-one update"
    assert np.array_equal(got_cov.reshape(p, p), got_cov.reshape(p, p).T), "P stays symmetric to the bit"
    # the calls above took the vectorised compiles (one per dtype), not a scalar compile of their own
    assert len(_p_phi.overloads) == len(_cov_update.overloads) == 2


@pytest.mark.parametrize("seed", range(4))
def test_slot_order_is_a_stable_sort_by_slot(seed: int) -> None:
    """The counting sort equals NumPy's stable argsort (each slot's rows in their arrival order), with the
    pool's slot count given or not; small or sorted batches keep the arrival order (None)."""
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, [3, 50, 1000, 7][seed], size=[300, 1000, 4000, 256][seed]).astype(np.int64)
    want = np.argsort(slots, kind="stable")
    for nslots in (None, int(slots.max()) + 1 + seed * 10):
        got = slot_order(slots, nslots)
        assert got is not None
        assert np.array_equal(got, want)
    assert slot_order(np.sort(slots)) is None, "already in slot order"
    assert slot_order(slots[: fused_tracking.SORT_MIN_ROWS - 1]) is None, "too small to sort"


@pytest.mark.parametrize("nslots", [2049, 4097, 131_072, 3_000_000, 2**33 + 5])
def test_slot_order_of_a_few_rows_among_many_slots_is_a_stable_sort_by_slot(nslots: int) -> None:
    """With many more slots than rows the sort is a radix sort (two or more passes over digits of the
    slots): still NumPy's stable argsort, repeats included, up to slot ``nslots - 1``."""
    rng = np.random.default_rng(nslots % 1000)
    slots = rng.integers(0, nslots, size=1024).astype(np.int64)
    slots[::7] = slots[0]  # one slot many times, its rows in their order
    slots[5], slots[9] = nslots - 1, 0
    want = np.argsort(slots, kind="stable")
    for given in (nslots, None):
        got = slot_order(slots, given)
        assert got is not None
        assert np.array_equal(got, want)


def _assert_same_predictions(
    pools: dict[str, StreamPool],
    slots: dict[str, list[int]],
    who: np.ndarray,
    x: torch.Tensor,
    signs: np.random.Generator,
    eps: float,
    tol: dict[str, float],
    t: int,
    seen: dict[str, float],
) -> None:
    """``predict`` (no learning) of the kernel equals the torch round's, and leaves every buffer as it was
    (linear pools fold a copy of the row into the inputs' scales; series ignore ``x``)."""
    before = {key: value.clone() for key, value in pools["auto"].state.items()}
    linear = pools["auto"].model.family == "linear"
    got: dict[str, torch.Tensor] = {}
    for k, p in pools.items():
        s = np.array(slots[k])[who % len(slots[k])]
        jitter = torch.from_numpy(signs.choice([-1.0, 1.0], size=tuple(x.shape)))
        xk = x * (1 + eps * jitter) if k == "moved" else x.clone()
        got[k] = p.predict(s, xk if linear else None)
    assert got["torch"].isfinite().any(), "predictions to compare"
    _assert_same(got["auto"], got["torch"], tol, f"step {t}: predict", got["moved"], seen)
    for key, value in pools["auto"].state.items():
        assert torch.equal(value.nan_to_num(0.5), before[key].nan_to_num(0.5)), f"predict changed {key}"


def test_kernels_setting_and_warm_up() -> None:
    """``auto`` picks the fused kernel on the CPU, ``torch`` forces the torch round; warm-up compiles both
    dtypes (from numba's cache here: the tests above compiled them)."""
    assert fused_applies(torch.device("cpu"), torch.float32)
    assert not fused_applies(torch.device("meta"), torch.float32)
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    assert StreamPool(spec).fused
    assert not StreamPool(spec, kernels="torch").fused
    first_order = StreamSpec.model_validate(
        {"model": {"family": "linear", "in_dim": 2}, "optimizer": {"precondition": "none"}}
    )
    assert StreamPool(first_order)._fused is None, (
        "the first-order round is not this kernel's (fused_round.py)"
    )
    assert warm_up() >= 0
    compiled = len(tracking_round.overloads), len(tracking_predict.overloads)
    for dtype in ("float32", "float64"):  # warm-up compiled exactly the types a pool's calls have
        for model in ({"family": "linear", "in_dim": 3}, {"family": "track", "dim": 2}):
            spec = StreamSpec.model_validate({"model": model, "dtype": dtype})
            pool = StreamPool(spec)
            slot = pool.add(spec)
            x = torch.ones(1, 3 if model["family"] == "linear" else 2, dtype=getattr(torch, dtype))
            y = torch.ones(1, 1, dtype=x.dtype) if model["family"] == "linear" else None
            assert pool.observe(np.array([slot]), x, y).nonfinite.tolist() == [False]
            assert pool.predict(np.array([slot]), x if y is not None else None).isfinite().all()
    assert (len(tracking_round.overloads), len(tracking_predict.overloads)) == compiled == (2, 2)
    backwards = np.arange(fused_tracking.SORT_MIN_ROWS, dtype=np.int64)[::-1].copy()
    assert np.array_equal(slot_order(backwards, 1024), backwards)  # type: ignore[arg-type]
    assert len(slot_order_into.overloads) == 1, "warm-up compiled the sort for a pool's argument types"
