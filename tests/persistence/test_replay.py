"""`plan_replay`: which durability-log entries a restore applies on top of a checkpoint.

Table-driven: each case is a checkpoint (epoch, position), a log tail of ``(position, epoch, base)``
entries in store order, and the positions that must be applied. The e2e tests cover the common paths;
these cover the interleavings that need a crash at one exact moment.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from trackin.models.engine import Engine
from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import IngestBatch
from trackin.service.durability.payloads import (
    LoggedBatch,
    decode_group,
    decode_payload,
    encode_batches,
    encode_group,
    plan_replay,
)

Entry = tuple[str, int | None, str | None]

CASES: list[tuple[str, tuple[int, str], list[Entry], list[str]]] = [
    ("empty tail", (1, "p0"), [], []),
    (
        "one owner, chained",
        (1, "p0"),
        [("p1", 1, "p0"), ("p2", 1, "p1"), ("p3", 1, "p2")],
        ["p1", "p2", "p3"],
    ),
    ("first entry of a stream never checkpointed", (1, ""), [("p1", 1, ""), ("p2", 1, "p1")], ["p1", "p2"]),
    ("new owner continues the old one's tail", (1, "p0"), [("p1", 1, "p0"), ("p2", 2, "p1")], ["p1", "p2"]),
    (
        "stale writer after the new owner's checkpoint",
        (2, "p5"),
        [("p6", 1, "p4"), ("p7", 2, "p5"), ("p8", 1, "p6")],
        ["p7"],
    ),
    (
        # B (epoch 2) restored at p1; A (epoch 1) appended p2 before B's first append, which is based on p1.
        "stale writer interleaved before the new owner's first checkpoint",
        (1, "p0"),
        [("p1", 1, "p0"), ("p2", 1, "p1"), ("p3", 2, "p1"), ("p4", 1, "p2"), ("p5", 2, "p3")],
        ["p1", "p3", "p5"],
    ),
    (
        # An append answered 503 that the store executed anyway (p2); the writer's next append is based
        # on p1, the last one it applied.
        "orphaned append cut off by the writer's next entry",
        (1, "p0"),
        [("p1", 1, "p0"), ("p2", 1, "p1"), ("p3", 1, "p1")],
        ["p1", "p3"],
    ),
    ("entry based outside the chain", (3, "p0"), [("p1", 3, "p9"), ("p2", 3, "p0")], ["p2"]),
    (
        "payloads without epoch or base replay in order",
        (1, "p0"),
        [("p1", None, None), ("p2", None, None)],
        ["p1", "p2"],
    ),
]


def _entry(position: str, epoch: int | None, base: str | None) -> LoggedBatch:
    return LoggedBatch(position, epoch, base, [np.zeros(1)], [None])


@pytest.mark.parametrize(("checkpoint", "tail", "applied"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_replay(checkpoint: tuple[int, str], tail: list[Entry], applied: list[str]) -> None:
    plan = plan_replay(*checkpoint, [_entry(*e) for e in tail])
    assert [e.position for e in plan.apply] == applied
    assert plan.head == (applied[-1] if applied else checkpoint[1])
    assert plan.skipped == len(tail) - len(applied)


def test_payload_round_trip_keeps_epoch_base_and_exact_values() -> None:
    x = np.array([0.1, 1 / 3, -2.5e-300])
    y = np.array([np.pi])
    batch = IngestBatch(stream_ids=["s", "t", "s"], inputs=[x, x * 2, x * 3], targets=[y, None, y * 2])
    payloads = encode_batches([batch], 7, {"s": "12-0"})
    s = decode_payload("13-0", payloads["s"])
    assert (s.epoch, s.base, s.position) == (7, "12-0", "13-0")
    assert [a.tolist() for a in s.inputs] == [x.tolist(), (x * 3).tolist()]
    assert [a.tolist() for a in s.targets if a is not None] == [y.tolist(), (y * 2).tolist()]
    t = decode_payload("13-1", payloads["t"])
    assert (t.base, t.targets) == ("", [None])


def test_payloads_of_streams_with_different_widths() -> None:
    wide, narrow = np.arange(5.0), np.array([2.0])
    batch = IngestBatch(stream_ids=["w", "n", "w"], inputs=[wide, narrow, wide + 1], targets=[None] * 3)
    payloads = encode_batches([batch, batch], 1, {})
    w = decode_payload("1", payloads["w"])
    assert [a.tolist() for a in w.inputs] == [wide.tolist(), (wide + 1).tolist()] * 2
    assert [a.tolist() for a in decode_payload("2", payloads["n"]).inputs] == [narrow.tolist()] * 2


def test_first_format_payloads_still_replay() -> None:
    old = msgpack.packb({"x": [[1.0, 2.0]], "y": [[0.5]]})
    entry = decode_payload("7", old)
    assert (entry.epoch, entry.base) == (None, None)
    assert [a.tolist() for a in entry.inputs] == [[1.0, 2.0]]
    assert [a.tolist() for a in entry.targets if a is not None] == [[0.5]]


def test_payloads_carry_series_times_and_mixed_kinds() -> None:
    value = np.array([1.5, -2.0])
    x, y = np.array([0.25, 0.5]), np.array([1.0])
    batch = IngestBatch(
        stream_ids=["ar", "lin", "ar"],
        inputs=[value, x, value * 2],
        targets=[None, y, None],
        times=[3.0, None, None],
    )
    payloads = encode_batches([batch], 4, {"ar": "9"})
    ar = decode_payload("10", payloads["ar"])
    assert (ar.epoch, ar.base, ar.times) == (4, "9", [3.0, None])
    assert [a.tolist() for a in ar.inputs] == [value.tolist(), (value * 2).tolist()]
    assert ar.targets == [None, None]
    lin = decode_payload("11", payloads["lin"])
    assert lin.times == [None]
    assert [a.tolist() for a in lin.targets if a is not None] == [y.tolist()]
    assert payloads["lin"][:1] == b"\xc1", "the binary format, not MessagePack"


def test_uniform_series_batch_with_times() -> None:
    values = [np.array([float(i)]) for i in range(4)]
    batch = IngestBatch(
        stream_ids=["a", "b", "a", "b"], inputs=values, targets=[None] * 4, times=[1.0, None, 2.5, 7.0]
    )
    payloads = encode_batches([batch], 2, {})
    a, b = decode_payload("1", payloads["a"]), decode_payload("2", payloads["b"])
    assert (a.times, b.times) == ([1.0, 2.5], [None, 7.0])
    assert [v.tolist() for v in b.inputs] == [[1.0], [3.0]]


def test_batch_log_entry_round_trip_per_stream_shares() -> None:
    """One entry per batch (group commit): each stream's share decodes as a per-stream entry would."""
    x = np.array([[0.1, 1 / 3], [2.0, -2.5e-300], [4.0, 5.0]])
    y = np.array([[np.pi], [1.0], [-1.0]])
    batch = IngestBatch(["s", "t", "s"], x=x, y=y, t=np.array([np.nan, 2.0, np.nan]))
    [entry] = encode_group([batch, batch], 7, {"s": "b12"})
    assert entry.streams == ["s", "t"]
    shares = decode_group("b13", entry.payload)
    s, t = shares["s"], shares["t"]
    assert (s.position, s.epoch, s.base, t.base) == ("b13", 7, "b12", "")
    assert [a.tolist() for a in s.inputs] == [x[0].tolist(), x[2].tolist()] * 2
    assert [a.tolist() for a in s.targets if a is not None] == [y[0].tolist(), y[2].tolist()] * 2
    assert (s.times, t.times) == ([None] * 4, [2.0, 2.0])


def test_batch_log_entries_of_streams_with_different_widths() -> None:
    wide, narrow, y = np.arange(5.0), np.array([2.0]), np.array([1.0])
    batch = IngestBatch(
        ["w", "n", "w", "l"], inputs=[wide, narrow, wide + 1, narrow], targets=[None, None, None, y]
    )
    entries = encode_group([batch], 1, {"n": "7"})
    assert sorted(e.streams for e in entries) == [["l"], ["n"], ["w"]], "one entry per width class"
    shares = {k: v for i, e in enumerate(entries) for k, v in decode_group(f"b{i}", e.payload).items()}
    assert [a.tolist() for a in shares["w"].inputs] == [wide.tolist(), (wide + 1).tolist()]
    assert (shares["n"].base, shares["n"].targets) == ("7", [None])
    assert [a.tolist() for a in shares["l"].targets if a is not None] == [y.tolist()]


FLOAT32 = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}})
FLOAT64 = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}, "dtype": "float64"})
TRACK = StreamSpec.model_validate({"model": {"family": "track", "dim": 2}})


def _replayed(entry: bytes, specs: dict[str, StreamSpec]) -> Engine:
    """A fresh engine that stepped on each stream's share of the decoded entry, as a restore does."""
    engine = Engine("cpu")
    for stream, spec in specs.items():
        engine.add(stream, spec)
    for stream, share in decode_group("b1", entry).items():
        engine.observe([stream] * len(share.inputs), share.inputs, share.targets, share.times)
    return engine


def test_float32_streams_replay_a_narrowed_entry_to_the_same_state_bit_for_bit() -> None:
    """Format 4: streams that keep float32 state get their inputs and targets logged as float32 (the
    engine casts to it before any arithmetic), so a replay ends in exactly the live state; 40 % less to
    store. Values are float64 noise, which float32 cannot hold: the live engine gets the originals."""
    rng = np.random.default_rng(3)
    ids = [("a", "b", "c")[i] for i in rng.integers(0, 3, 300)]
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 1))
    specs = dict.fromkeys(("a", "b", "c"), FLOAT32)
    [entry] = encode_group([IngestBatch(ids, x=x, y=y, specs=dict(specs))], 1, {})
    [wide] = encode_group([IngestBatch(ids, x=x, y=y)], 1, {})  # no specs known: float64
    assert (entry.payload[1], wide.payload[1]) == (4, 3)
    assert len(wide.payload) - len(entry.payload) == 300 * 4 * 4
    live = Engine("cpu")
    for stream, spec in specs.items():
        live.add(stream, spec)
    live.observe_arrays(ids, x, y)
    replayed = _replayed(entry.payload, specs)
    for stream in specs:
        got, want = replayed.export(stream), live.export(stream)
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), (stream, key)


def test_a_track_replays_a_narrowed_entry_with_its_times_kept_in_float64() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(40, 2)).cumsum(axis=0)
    times = 1e5 + np.cumsum(rng.uniform(0.5, 1.5, 40)) + 1e-9  # frame times float32 cannot hold exactly
    times[7] = np.nan  # "one unit after the last"
    ids = ["s"] * 40
    [entry] = encode_group([IngestBatch(ids, x=values, y=None, t=times, specs={"s": TRACK})], 1, {})
    assert entry.payload[1] == 4
    share = decode_group("b1", entry.payload)["s"]
    assert share.times == [None if t != t else float(t) for t in times.tolist()]
    live = Engine("cpu")
    live.add("s", TRACK)
    live.observe_arrays(ids, values, None, times)
    got, want = _replayed(entry.payload, {"s": TRACK}).export("s"), live.export("s")
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_an_entry_with_a_float64_stream_keeps_every_value_exact() -> None:
    x = np.array([[0.1, 1 / 3, -2.5e-300], [2.0, np.pi, 1e300]])
    y = np.array([[1 / 7], [np.e]])
    specs = {"f": FLOAT32, "d": FLOAT64}
    [entry] = encode_group([IngestBatch(["f", "d"], x=x, y=y, specs=specs)], 1, {})
    assert entry.payload[1] == 3  # one float64 stream keeps the whole entry wide
    shares = decode_group("b1", entry.payload)
    assert [shares["f"].inputs[0].tolist(), shares["d"].inputs[0].tolist()] == x.tolist()
    assert [shares["f"].targets[0].tolist(), shares["d"].targets[0].tolist()] == y.tolist()  # type: ignore[union-attr]
