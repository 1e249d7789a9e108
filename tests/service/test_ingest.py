"""service/ingest.py and service/wire.py: every check names the field (a JSON path) and the stream."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from trackin.models.specs import StreamSpec
from trackin.service.domain.ingest import _general_batch, _supervised_rows, build_batch, check_vector
from trackin.service.errors import InvalidInput
from trackin.service.transport.columnar import columns_of
from trackin.service.transport.wire import (
    ObservationIn,
    ObservationsBody,
    WsMessage,
    decode_json,
    decode_msgpack,
)

LIN = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3, "out_dim": 2}})
AR = StreamSpec.model_validate({"model": {"family": "ar", "dim": 2}})
BCE = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 1}, "loss": "bce"})
SPECS = {"lin": LIN, "ar": AR, "bce": BCE}
OK_LIN: dict[str, Any] = {"stream": "lin", "x": [1, 2, 3], "y": [1, 2]}
OK_AR: dict[str, Any] = {"stream": "ar", "value": [1, 2]}

BAD_ITEMS = [
    ([OK_LIN, {"stream": "lin", "x": [1, 2], "y": [1, 2]}], "observations[1].x", "lin"),
    ([{"stream": "lin", "x": [1, 2, 3], "y": 1.0}], "observations[0].y", "lin"),
    ([OK_AR, {"stream": "lin", "x": [1, 2, 3]}], "observations[1].y", "lin"),
    ([{"stream": "lin", "y": [1, 2]}], "observations[0].x", "lin"),
    ([OK_LIN, OK_AR, {"stream": "lin", "value": [1, 2]}], "observations[2].value", "lin"),
    ([{"stream": "ar", "value": [1, 2, 3]}], "observations[0].value", "ar"),
    ([{"stream": "ar", "x": [1, 2], "y": [1, 2]}], "observations[0].value", "ar"),
    ([{"stream": "ar", "value": [1, 2], "x": [1]}], "observations[0].x", "ar"),
    ([OK_LIN, {"stream": "ar", "value": [1, float("nan")]}], "observations[1].value", "ar"),
    ([{"stream": "lin", "x": [1, float("inf"), 3], "y": [1, 2]}], "observations[0].x", "lin"),
    (
        [OK_LIN, OK_LIN, {"stream": "lin", "x": [1, 2, 3], "y": [1, float("-inf")]}],
        "observations[2].y",
        "lin",
    ),
    ([{"stream": "bce", "x": [1], "y": 1.5}], "observations[0].y", "bce"),
    ([{"stream": "bce", "x": [1], "y": -0.1}], "observations[0].y", "bce"),
    ([OK_LIN, {"x": [1, 2, 3], "y": [1, 2]}], "observations[1].stream", None),
]


@pytest.mark.parametrize(("items", "field", "stream"), BAD_ITEMS)
def test_build_batch_names_the_first_bad_field(
    items: list[dict[str, Any]], field: str, stream: str | None
) -> None:
    with pytest.raises(InvalidInput) as error:
        build_batch([ObservationIn(**i) for i in items], SPECS)
    assert (error.value.field, error.value.stream) == (field, stream)


def test_build_batch_keeps_order_and_values() -> None:
    items = [
        OK_LIN,
        OK_AR,
        {"stream": "lin", "x": [4, 5, 6], "y": [0, 1]},
        {"stream": "bce", "x": [2], "y": 1},
    ]
    batch = build_batch([ObservationIn(**i) for i in items], SPECS)
    assert batch.stream_ids == ["lin", "ar", "lin", "bce"]
    assert len(batch) == 4
    np.testing.assert_array_equal(batch.inputs[2], [4, 5, 6])
    np.testing.assert_array_equal(batch.targets[2], [0, 1])
    np.testing.assert_array_equal(batch.inputs[1], [1, 2])
    assert batch.targets[1] is None
    np.testing.assert_array_equal(batch.targets[3], [1])
    assert all(a.dtype == np.float64 for a in batch.inputs)
    assert set(batch.specs) == {"lin", "ar", "bce"}


@pytest.mark.parametrize(
    ("item", "default"),
    [(OK_LIN, None), ({"x": [1, 2, 3], "y": [1, 2]}, "lin"), ({"stream": "bce", "x": [0.5], "y": 0}, None)],
)
def test_one_observation_is_the_general_paths_batch(item: dict[str, Any], default: str | None) -> None:
    """A single supervised item takes a shorter path (`_one_supervised`): the same batch as the general
    path makes for it (here: its first row in a request of two), columnar, float64."""
    one = build_batch([ObservationIn(**item)], SPECS, default_stream=default)
    two = build_batch([ObservationIn(**item), ObservationIn(**item)], SPECS, default_stream=default)
    assert one.x is not None
    assert one.y is not None
    assert two.x is not None
    assert two.y is not None
    assert one.stream_ids == two.stream_ids[:1]
    assert one.specs == two.specs
    assert (one.x.dtype, one.y.dtype, one.t) == (np.float64, np.float64, None)
    np.testing.assert_array_equal(one.x, two.x[:1])
    np.testing.assert_array_equal(one.y, two.y[:1])


LIN1 = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}})
MLP = StreamSpec.model_validate({"model": {"family": "mlp", "in_dim": 3, "hidden": [4], "out_dim": 2}})
ROWS: list[tuple[list[dict[str, Any]], str | None]] = [
    (
        [
            OK_LIN,
            {"stream": "lin", "x": [4, 5.5, -6], "y": [0, 1]},
            {"stream": "mlp", "x": [1, 1, 1], "y": [2, 3]},
        ],
        None,
    ),
    ([{"x": [1, 2, 3], "y": [1, 2]}, {"stream": "lin", "x": [3, 2, 1], "y": [0.5, -1]}], "lin"),
    ([{"stream": "one", "x": [1, 2, 3], "y": 1.5}, {"stream": "one2", "x": [0, 0, 1e300], "y": -2}], None),
    (
        [{"stream": "one", "x": [1, 2, 3], "y": [1.5]}, {"stream": "one2", "x": [0, 0, 1], "y": [7]}] * 50,
        None,
    ),
]


@pytest.mark.parametrize(("items", "default"), ROWS)
def test_supervised_rows_are_the_general_paths_batch(
    items: list[dict[str, Any]], default: str | None
) -> None:
    """Many valid supervised items of one width take the array path (`_supervised_rows`): the same
    batch as the item-by-item path, columnar, float64."""
    specs = {**SPECS, "mlp": MLP, "one": LIN1, "one2": LIN1}
    observations = [ObservationIn(**i) for i in items]
    fast = _supervised_rows(observations, specs, default)
    general = _general_batch(observations, specs, default_stream=default)
    assert fast is not None, "valid rows of one width take the array path"
    assert fast.x is not None
    assert fast.y is not None
    assert general.x is not None
    assert general.y is not None
    assert (fast.stream_ids, fast.specs, fast.t) == (general.stream_ids, general.specs, general.t)
    assert list(fast.specs) == list(general.specs), "specs in order of first appearance"
    assert (fast.x.dtype, fast.y.dtype) == (np.float64, np.float64)
    np.testing.assert_array_equal(fast.x, general.x)
    np.testing.assert_array_equal(fast.y, general.y)


@pytest.mark.parametrize(
    "items",
    [
        [OK_LIN, OK_AR],  # a series item
        [OK_LIN, {"stream": "bce", "x": [1], "y": 1}],  # two widths
        [{"stream": "bce", "x": [1], "y": 1}, {"stream": "bce", "x": [2], "y": 0}],  # bce: range per stream
        [OK_LIN, {"stream": "lin", "x": [1, 2, 3], "y": [1, 2], "ts": 3.0}],
        [OK_LIN, {"stream": "lin", "x": [1, 2, 3], "y": 1}],  # a scalar beside lists
    ],
)
def test_supervised_rows_leave_the_rest_to_the_general_path(items: list[dict[str, Any]]) -> None:
    assert _supervised_rows([ObservationIn(**i) for i in items], SPECS, None) is None


def test_a_stream_other_than_the_urls_is_refused() -> None:
    with pytest.raises(InvalidInput) as error:
        build_batch([ObservationIn(**OK_LIN)], SPECS, default_stream="ar")
    assert error.value.field == "observations[0].stream"


def test_check_vector() -> None:
    np.testing.assert_array_equal(check_vector([1, 2], 2, "x", "s"), [1, 2])
    with pytest.raises(InvalidInput) as error:
        check_vector([1, float("nan")], 2, "x", "s")
    assert (error.value.field, error.value.stream) == ("x[1]", "s")
    with pytest.raises(InvalidInput) as error:
        check_vector([1], 2, "x", "s")
    assert error.value.field == "x"


DECODE_CASES = [
    (b'{"x": [1, "a"]}', ObservationIn, "observations[0]", "observations[0].x[1]", None),
    (b'{"x": [1], "q": 2}', ObservationIn, "observations[0]", "observations[0].q", None),
    (b'[{"x": [1]}, {"x": [1e999]}]', list[ObservationIn], "observations", "observations[1].x[0]", None),
    (b'{"observations": [{"stream": "s1", "x": [true]}]}', ObservationsBody, "",
     "observations[0].x[0]", "s1"),
    (b'{"observations": [{"stream": "s1"}, {"stream": "s2", "w": 1}]}', ObservationsBody, "",
     "observations[1].w", "s2"),
    (b'{"seq": 1, "observations": [{"stream": "s", "y": "1"}]}', WsMessage, "", "observations[0].y", "s"),
    (b'{"seq": 1}', WsMessage, "", "observations", None),
    (b'{"seq": 1, "observations": [', WsMessage, "", "body", None),
    (b"", ObservationIn, "observations[0]", "body", None),
]  # fmt: skip


def _decode_checked(raw: bytes, kind: Any, prefix: str) -> None:
    decoded = decode_json(raw, kind, prefix=prefix)
    if isinstance(decoded, ObservationsBody):
        columns_of(decoded)  # a body with neither form is refused here


@pytest.mark.parametrize(("raw", "kind", "prefix", "field", "stream"), DECODE_CASES)
def test_decode_errors_name_the_field(
    raw: bytes, kind: Any, prefix: str, field: str, stream: str | None
) -> None:
    with pytest.raises(InvalidInput) as error:
        _decode_checked(raw, kind, prefix)
    assert (error.value.field, error.value.stream) == (field, stream)


def test_msgpack_decode_errors_name_the_field() -> None:
    raw = msgpack.packb({"seq": 3, "observations": [{"stream": "s", "x": [1, "2"]}]})
    with pytest.raises(InvalidInput) as error:
        decode_msgpack(raw, WsMessage)
    assert (error.value.field, error.value.stream) == ("observations[0].x[1]", "s")
    with pytest.raises(InvalidInput) as error:
        decode_msgpack(b"\xc1", WsMessage)
    assert error.value.field == "body"
    assert error.value.message.startswith("malformed")


@pytest.mark.parametrize(
    "items",
    [
        [OK_LIN],  # one supervised item
        [{"stream": s, "x": [1, 2, 3], "y": [1, 2]} for s in ("b", "lin", "b", "c", "lin")],  # rows
        [OK_AR, OK_LIN, OK_AR, {"stream": "ar2", "value": [3, 4]}, OK_LIN],  # the general path
        [{"stream": "c", "x": [1, 2, 3], "y": [1, 2]}, OK_AR, {"stream": "b", "x": [0, 0, 0], "y": [0, 0]}],
    ],
)
def test_a_batch_names_its_streams_once_each_in_order_of_arrival(items: list[dict[str, Any]]) -> None:
    """The durability log writes the distinct streams from `IngestBatch.streams` and reads them back in
    the order the ids first appear: every builder must give that order."""
    specs = {**SPECS, "b": LIN, "c": LIN, "ar2": AR}
    batch = build_batch([ObservationIn(**i) for i in items], specs)
    assert list(batch.streams) == list(dict.fromkeys(i["stream"] for i in items))
    assert list(batch.streams) == list(dict.fromkeys(batch.stream_ids))
