"""service/store/codec.py: exact round trips, and corrupt or future checkpoints refused by name."""

from __future__ import annotations

import pytest
import torch

from trackin.service.store import codec
from trackin.service.store.codec import FORMAT_VERSION, decode_state, encode_state
from trackin.service.store.errors import CorruptCheckpoint, StoreError

DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)], ids=str)
def test_round_trip_is_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(7)
    source = torch.randn(shape, generator=generator, dtype=torch.float64) * 100
    tensor = source > 0 if dtype == torch.bool else source.to(dtype)

    blob, meta = encode_state({"t": tensor}, {"spec": "x"})
    out = decode_state("s", blob, meta)

    assert list(out) == ["t"]
    assert out["t"].dtype == dtype
    assert out["t"].shape == tensor.shape
    assert torch.equal(out["t"], tensor)


def test_views_and_grad_tensors_encode_as_plain_values() -> None:
    stacked = torch.arange(24, dtype=torch.float32).reshape(4, 6)  # like a batched engine's [slots, ...]
    weight = torch.ones(3, 2, requires_grad=True) * 2
    tensors = {"slot1": stacked[1], "slot2": stacked[2], "col": stacked[:, 0], "t": stacked.T, "w": weight}

    blob, meta = encode_state(tensors, {})
    out = decode_state("s", blob, meta)

    for name, tensor in tensors.items():
        assert torch.equal(out[name], tensor.detach()), name
        assert out[name].is_contiguous()
        assert not out[name].requires_grad


def test_meta_gains_format_without_mutating_input() -> None:
    meta_in = {"spec": {"kind": "ar"}, "format": 99}
    _, meta = encode_state({}, meta_in)
    assert meta == {"spec": {"kind": "ar"}, "format": FORMAT_VERSION}
    assert meta_in["format"] == 99


def test_encoding_is_deterministic() -> None:
    tensors = {"b": torch.ones(2), "a": torch.zeros(3, dtype=torch.int64)}
    assert encode_state(tensors, {})[0] == encode_state(dict(reversed(tensors.items())), {})[0]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:-1], id="truncated-one-byte"),
        pytest.param(lambda b: b[:6], id="truncated-header"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:8] + b"#" + b[9:], id="header-json-broken"),
        pytest.param(lambda b: b"\xff" * 8 + b[8:], id="header-length-absurd"),
    ],
)
def test_damaged_blob_raises_corrupt_naming_the_stream(damage: object) -> None:
    blob, meta = encode_state({"w": torch.randn(8, 8)}, {})
    assert callable(damage)
    with pytest.raises(CorruptCheckpoint, match="'sensor-7'") as info:
        decode_state("sensor-7", damage(blob), meta)
    assert info.value.stream_id == "sensor-7"
    assert "does not parse" in info.value.reason
    assert isinstance(info.value, StoreError)


def test_future_format_is_rejected_clearly() -> None:
    blob, meta = encode_state({"w": torch.ones(1)}, {})
    with pytest.raises(
        CorruptCheckpoint, match=rf"'s9'.*format {FORMAT_VERSION + 1} is newer.*upgrade trackin"
    ):
        decode_state("s9", blob, {**meta, "format": FORMAT_VERSION + 1})


@pytest.mark.parametrize("bad", [None, "1", 1.0, True, 0, -3])
def test_missing_or_unknown_format_is_rejected(bad: object) -> None:
    blob, meta = encode_state({"w": torch.ones(1)}, {})
    meta = {k: v for k, v in meta.items() if k != "format"}
    if bad is not None:
        meta["format"] = bad
    with pytest.raises(CorruptCheckpoint, match=r"'s1'.*format"):
        decode_state("s1", blob, meta)


def test_older_format_goes_through_the_upgrade_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the next format exists: a checkpoint of today's loads through the registered step."""
    blob, meta = encode_state({"w": torch.tensor([1.0, 2.0])}, {"scale": 10.0})
    now = codec.FORMAT_VERSION
    assert meta["format"] == now

    def v1_to_v2(tensors: dict[str, torch.Tensor], meta: object) -> dict[str, torch.Tensor]:
        assert isinstance(meta, dict)
        return {"weight": tensors["w"] * meta["scale"]}

    monkeypatch.setattr(codec, "FORMAT_VERSION", now + 1)
    monkeypatch.setattr(codec, "_UPGRADES", {now: v1_to_v2})
    assert torch.equal(codec.decode_state("s", blob, meta)["weight"], torch.tensor([10.0, 20.0]))

    monkeypatch.setattr(codec, "_UPGRADES", {})
    with pytest.raises(CorruptCheckpoint, match=f"no upgrade from format {now}"):
        codec.decode_state("s", blob, meta)


def test_non_tensor_values_are_refused() -> None:
    with pytest.raises(TypeError, match="'w'"):
        encode_state({"w": [1.0]}, {})  # type: ignore[dict-item]


def test_a_format_1_stream_keeps_learning_the_first_order_way() -> None:
    """Format 2 added the scale-free path and made it the default; a stored format-1 spec (which never
    named it) is read as the first-order spec it was, and its tensors load into that pool unchanged."""
    from trackin.models.engine import Engine
    from trackin.models.specs import StreamSpec

    old = StreamSpec.model_validate(
        {"model": {"family": "ar", "lags": 2}, "optimizer": {"precondition": "none"}}
    )
    engine = Engine()
    engine.add("s", old)
    tensors = engine.export("s")
    v1_spec = old.model_dump(mode="json")
    for key in ("standardize", "mix_naive"):
        del v1_spec[key]
    del v1_spec["optimizer"]["precondition"], v1_spec["optimizer"]["forget"]
    blob, _ = encode_state(tensors, {})
    meta = {"format": 1, "spec": v1_spec}
    spec = StreamSpec.model_validate(codec.upgrade_spec(v1_spec, meta))
    assert not spec.tracking
    assert StreamSpec.model_validate(v1_spec).tracking, "read with today's defaults it would not fit"
    restored = Engine()
    restored.add("s", spec)
    restored.load("s", decode_state("s", blob, meta))


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"family": "mlp", "in_dim": 2}},
        {"model": {"family": "ar", "hidden": [3]}, "loss": "huber"},
        {"model": {"family": "linear", "in_dim": 2}, "optimizer": {"precondition": "none"}},
    ],
)
def test_a_format_2_first_order_stream_keeps_raw_units(spec: dict[str, object]) -> None:
    """Format 3 standardises the first-order path (its pools hold ``norm/*``); a format-2 first-order stream
    (whose stored spec says ``standardize: true``, which format 2 ignored there) is read in raw units and
    its tensors load into that pool unchanged, while a format-2 scale-free stream keeps its spec."""
    import numpy as np

    from trackin.models.engine import Engine
    from trackin.models.specs import StreamSpec

    raw = StreamSpec.model_validate({**spec, "standardize": False})
    engine = Engine()
    engine.add("s", raw)
    tensors = engine.export("s")
    assert not any(key.startswith("norm/") for key in tensors), "format 2 held no statistics"
    v2_spec = StreamSpec.model_validate(spec).model_dump(mode="json")
    assert v2_spec["standardize"] is True
    blob, _ = encode_state(tensors, {})
    meta = {"format": 2, "spec": v2_spec}
    upgraded = StreamSpec.model_validate(codec.upgrade_spec(v2_spec, meta))
    assert upgraded == raw
    restored = Engine()
    restored.add("s", upgraded)
    restored.load("s", decode_state("s", blob, meta))
    x = np.ones(raw.model.in_dim) if raw.model.family != "ar" else np.ones(1)
    assert restored.predict(["s"], [x]) == engine.predict(["s"], [x])
    tracking = StreamSpec.model_validate({"model": {"family": "ar"}}).model_dump(mode="json")
    assert codec.upgrade_spec(tracking, meta) == tracking
    assert FORMAT_VERSION == 4


def test_a_format_3_tracking_stream_keeps_its_one_head() -> None:
    """Format 4 gives the tracking path several RLS heads by default; a format-3 tracking stream (one head,
    no heads' errors in its state) is read as a one-head stream (``forget`` pinned to its number, 0.999
    where the stored spec left it out), its tensors load, and it forecasts as before."""
    import numpy as np

    from trackin.models import keys
    from trackin.models.engine import Engine
    from trackin.models.specs import StreamSpec

    one_head = StreamSpec.model_validate({"model": {"family": "ar"}, "optimizer": {"forget": 0.999}})
    engine = Engine()
    engine.add("s", one_head)
    for value in (1.0, 2.0, 2.5, 4.0, 3.0):
        engine.observe(["s"], [np.array([value])], [None])
    tensors = engine.export("s")
    del tensors[keys.HEAD_LOSS], tensors[keys.HEAD_S2]  # what format 3 held
    v3_spec = one_head.model_dump(mode="json")
    del v3_spec["optimizer"]["forget"]
    blob, _ = encode_state(tensors, {})
    meta = {"format": 3, "spec": v3_spec}
    upgraded = StreamSpec.model_validate(codec.upgrade_spec(v3_spec, meta))
    assert upgraded == one_head
    assert StreamSpec.model_validate(v3_spec).pool_key() != one_head.pool_key(), "today's default: 5 heads"
    restored = Engine()
    restored.add("s", upgraded)
    restored.load("s", decode_state("s", blob, meta))
    assert restored.predict(["s"], [None]) == engine.predict(["s"], [None])
