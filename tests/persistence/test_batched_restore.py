"""Batched restores in-process: a few hundred streams of several specs come back from their checkpoints
(decoded and loaded a page at a time) plus their log tails (replayed in one engine call) as they were,
whether eagerly at start or on first use, and a stream whose checkpoint was written by the per-key
encoder (another key order) loads as well.

The replay runs the streams' observations in other batches than the live traffic did (each stream's own,
in order, but beside other streams), and a round's kernels may round a value differently with the batch's
shape (a vector body or a scalar tail), so the states compare within float tolerances
(tests/support/tolerances.py); counters and flags compare exactly."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from tests.persistence.conftest import Backend
from tests.persistence.parts import LINEAR, Parts, assert_same_state
from tests.support.tolerances import step_ops, tolerance
from trackin.models.specs import StreamSpec, TrackModel
from trackin.service.store import decode_state, encode_state
from trackin.service.transport.wire import ObservationIn

pytestmark = pytest.mark.timeout(120)

AR = StreamSpec.model_validate({"model": {"family": "ar", "dim": 2, "lags": 3}})
WIDE = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}, "dtype": "float64"})
SPECS = {"lin": LINEAR, "ar": AR, "wide": WIDE}
PER_SPEC = 70


def _assert_close_state(stream_id: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    spec = SPECS[stream_id.rstrip("0123456789")]
    assert not isinstance(spec.model, TrackModel)
    tol = tolerance(spec.dtype, ops=step_ops(spec.model), steps=10, scale=4.0)
    assert set(got) == set(want)
    for key, value in want.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[key], value, equal_nan=True, **tol, msg=f"{stream_id} {key}")
        else:
            assert torch.equal(got[key], value), (stream_id, key)


def _ids() -> list[str]:
    return [f"{name}{i:03d}" for name in SPECS for i in range(PER_SPEC)]


def _items(ids: list[str], rng: np.random.Generator) -> list[ObservationIn]:
    """One observation for each of ``ids`` (shuffled, some twice), as a multi-stream request sends them."""
    picks = [*ids, *ids[::7]]
    out = []
    for i in rng.permutation(len(picks)):
        stream = picks[i]
        if stream.startswith("ar"):
            out.append(ObservationIn(stream=stream, value=rng.normal(size=2).round(3).tolist()))
        else:
            out.append(
                ObservationIn(stream=stream, x=rng.normal(size=2).round(3).tolist(), y=float(rng.normal()))
            )
    return out


async def _feed(parts: Parts, ids: list[str], rng: np.random.Generator) -> None:
    _, applied = await parts.registry.enqueue(_items(ids, rng), default_stream=None, prefix="observations")
    await applied


async def _crashed_with_tails(backend: Backend) -> dict[str, tuple[dict, int]]:
    """Streams checkpointed after a few batches, then given more batches that are only in the log; the
    state and count each had at the crash."""
    rng = np.random.default_rng(3)
    ids = _ids()
    async with Parts.on(backend.open()) as first:
        for stream_id in ids:
            await first.create(stream_id, SPECS[stream_id.rstrip("0123456789")])
        for _ in range(2):
            await _feed(first, ids, rng)
        await first.checkpointer.checkpoint(ids[::2])  # half checkpointed here, half only at creation
        for _ in range(2):
            await _feed(first, ids, rng)
        expected = {s: (await first.state(s), first.ledger.count(s)) for s in ids}
        await first.crash()
    return expected


async def test_an_eager_restore_brings_every_stream_back_exactly(backend: Backend) -> None:
    expected = await _crashed_with_tails(backend)
    async with backend.open() as store:
        stored = await store.read_checkpoints(list(expected))
    assert gc.isenabled()
    async with Parts.on(backend.open(), restore_eagerly=True) as second:
        await second.loop.start()
        assert gc.isenabled(), "the eager restore pauses the cyclic collector, and must turn it back on"
        assert sorted(second.engine) == sorted(expected)
        for stream_id, (state, count) in expected.items():
            _assert_close_state(stream_id, await second.state(stream_id), state)
            assert second.ledger.count(stream_id) == count
        replayed = second.sample("trackin_observations_total", outcome="applied", transport="log")
        assert replayed == sum(c for _, c in expected.values()) - sum(c.step for c in stored.values())
        assert replayed > len(expected)  # every stream had a tail to replay
        # and they go on learning from there, in the batched pools
        ids = list(expected)
        await _feed(second, ids, np.random.default_rng(9))
        twice = set(ids[::7])
        assert all(second.ledger.count(s) == c + 1 + (s in twice) for s, (_, c) in expected.items())


async def test_a_restore_on_first_use_is_the_same(backend: Backend) -> None:
    expected = await _crashed_with_tails(backend)
    async with Parts.on(backend.open()) as second:
        await second.restorer.prefetch(list(expected))
        for stream_id, (state, count) in expected.items():
            _assert_close_state(stream_id, await second.state(stream_id), state)
            assert second.ledger.count(stream_id) == count


async def test_checkpoints_in_another_key_order_still_load(backend: Backend) -> None:
    async with Parts.on(backend.open()) as first:
        await first.create("a")
        await first.create("b")
        await _feed(first, ["a", "b"], np.random.default_rng(1))
        await first.checkpointer.checkpoint(["a", "b"])
        want = await first.state("a")
        await first.crash()
    async with backend.open() as store:
        stored = await store.read_checkpoint("a")
    assert stored is not None
    tensors = decode_state("a", stored.tensors, stored.meta)
    blob, meta = encode_state(dict(reversed(tensors.items())), stored.meta)  # the per-key encoder
    assert blob != stored.tensors
    backend.overwrite_tensors("a", blob)
    assert meta["format"] == stored.meta["format"]

    async with Parts.on(backend.open()) as second:
        await second.restorer.prefetch(["a", "b"])
        assert_same_state(await second.state("a"), want)
        assert "b" in second.engine
