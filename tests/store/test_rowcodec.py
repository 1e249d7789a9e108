"""service/store/rowcodec.py: a pool's rows as safetensors blobs are what the per-key codec reads back as
the engine's export, and decode back to the same rows (a copy: bit for bit); blobs it did not write are
left to the generic decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.tolerances import step_ops, tolerance
from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.store.codec import FORMAT_KEY, FORMAT_VERSION, decode_state, encode_state
from trackin.service.store.rowcodec import RowCodec, rows_from_tensors

SPECS = [
    {"model": {"family": "linear", "in_dim": 3}},
    {"model": {"family": "ar", "dim": 2, "lags": 3}, "dtype": "float64"},
    {"model": {"family": "mlp", "in_dim": 2, "hidden": [4]}, "optimizer": {"name": "adam"}},
    {"model": {"family": "track"}},
]


def _engine(spec: StreamSpec, n: int) -> tuple[Engine, list[str]]:
    """``n`` streams of ``spec`` that have learned a little (so no two rows are alike)."""
    engine, ids = Engine("cpu"), [f"s{i}" for i in range(n)]
    for stream_id in ids:
        engine.add(stream_id, spec)
    rng = np.random.default_rng(0)
    picks = [ids[i] for i in rng.integers(0, n, 4 * n)]
    model = spec.model
    if hasattr(model, "in_dim"):
        engine.observe(picks, list(rng.normal(size=(4 * n, model.in_dim))), list(rng.normal(size=(4 * n, 1))))
    else:
        engine.observe(picks, list(rng.normal(size=(4 * n, model.dim))), [None] * (4 * n))
    return engine, ids


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.nan_to_num(7.25), b.nan_to_num(7.25))


@pytest.mark.parametrize("raw", SPECS, ids=[s["model"]["family"] for s in SPECS])
def test_rows_round_trip_through_blobs_any_decoder_reads(raw: dict) -> None:
    spec = StreamSpec.model_validate(raw)
    engine, ids = _engine(spec, 12)
    [(pool, exported, rows)] = engine.export_rows(ids[::-1])
    assert exported == ids[::-1]
    codec = RowCodec(pool.packed)
    blobs = codec.encode(rows)
    for stream_id, blob in zip(exported, blobs, strict=True):
        read = decode_state(stream_id, blob, {FORMAT_KEY: FORMAT_VERSION})  # the generic safetensors path
        want = engine.export(stream_id)
        assert read.keys() == want.keys()
        assert all(_same(read[k], want[k]) for k in want)
    back, taken = codec.decode(blobs)
    assert taken == list(range(len(blobs)))
    assert all(torch.equal(b.nan_to_num(7.25), r.nan_to_num(7.25)) for b, r in zip(back, rows, strict=True))

    restored = Engine("cpu")
    restored.load_many(exported, spec, back)
    for stream_id in ids:
        got, want = restored.export(stream_id), engine.export(stream_id)
        assert all(_same(got[k], want[k]) for k in want), stream_id


def test_blobs_it_did_not_write_are_left_to_the_generic_decoder() -> None:
    spec = StreamSpec.model_validate(SPECS[0])
    engine, ids = _engine(spec, 3)
    [(pool, exported, rows)] = engine.export_rows(ids)
    codec = RowCodec(pool.packed)
    blobs = codec.encode(rows)
    per_key = encode_state(engine.export(exported[1]), {})[0]  # sorted keys: another header
    _, taken = codec.decode([blobs[0][:-1], per_key, blobs[2], blobs[2] + b"\0"])
    assert taken == [2]
    # what the generic path reads goes into rows the same way
    one = rows_from_tensors(pool.packed, decode_state(exported[1], per_key, {FORMAT_KEY: FORMAT_VERSION}))
    assert all(
        torch.equal(a.nan_to_num(7.25), b[1:2].nan_to_num(7.25)) for a, b in zip(one, rows, strict=True)
    )
    with pytest.raises(KeyError):
        rows_from_tensors(pool.packed, {})


def test_load_many_counts_the_settings_its_streams_share() -> None:
    slow = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}, "optimizer": {"lr": 0.01}})
    fast = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}, "optimizer": {"lr": 0.02}})
    source, ids = _engine(slow, 4)
    [(_, exported, rows)] = source.export_rows(ids)
    engine = Engine("cpu")
    engine.add("f", fast)
    engine.load_many(exported, slow, rows)
    assert engine.locate("f").pool is engine.pool_of(slow)
    # the pool now holds two learning rates (a column, no longer a shared number): "f" steps with its own
    x, y = [np.ones(3)], [np.ones(1)]
    alone = Engine("cpu")
    alone.add("f", fast)
    for _ in range(3):
        alone.observe(["f"], x, y)
        engine.observe(["f"], x, y)
    assert fast.model.family == "linear"
    tol = tolerance(torch.float32, ops=step_ops(fast.model), steps=3)  # type: ignore[arg-type]
    torch.testing.assert_close(engine.export("f")["param/weight"], alone.export("f")["param/weight"], **tol)
    with pytest.raises(ValueError, match="do not exist yet"):
        engine.load_many(["f"], fast, [r[:1] for r in rows])
