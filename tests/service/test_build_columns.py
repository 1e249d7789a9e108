"""service/domain/columns.py in-process: the checks that take a shortcut when a body's streams share one
spec object (as the registry finds them) refuse the same rows as when they do not."""

from __future__ import annotations

import numpy as np
import pytest

from trackin.models.specs import StreamSpec
from trackin.service.domain.columns import Columns, build_columns
from trackin.service.errors import InvalidInput

BCE = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}, "loss": "bce"})
MSE = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
WIDE = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 3}})


def _columns(streams: list[str], y: list[float]) -> Columns:
    return Columns(streams, np.ones((len(streams), 2)), np.asarray(y, dtype=np.float64)[:, None])


def _refusal(columns: Columns, specs: dict[str, StreamSpec]) -> tuple[str | None, str | None]:
    with pytest.raises(InvalidInput) as refused:
        build_columns(columns, specs)
    return refused.value.field, refused.value.stream


def test_bce_targets_are_checked_whether_or_not_the_streams_share_a_spec() -> None:
    shared = {"a": BCE, "b": BCE}  # one object
    assert _refusal(_columns(["a", "b", "a"], [0.5, 1.0, 1.5]), shared) == ("y[2]", "a")
    copied = {"a": BCE, "b": BCE.model_copy()}  # equal, not the same object
    assert _refusal(_columns(["a", "b", "b"], [0.5, 1.0, -0.5]), copied) == ("y[2]", "b")
    mixed = {"m": MSE, "b": BCE}  # a target of 1.5 is fine for the squared loss only
    assert build_columns(_columns(["m", "b"], [1.5, 1.0]), mixed).y is not None
    assert _refusal(_columns(["m", "b"], [1.5, 2.0]), mixed) == ("y[1]", "b")


def test_streams_of_two_shapes_are_refused_naming_the_first_that_differs() -> None:
    columns = Columns(["a", "b", "w"], np.ones((3, 2)), np.ones((3, 1)))
    assert _refusal(columns, {"a": MSE, "b": MSE, "w": WIDE}) == ("streams[2]", "w")
    batch = build_columns(Columns(["a", "b"], np.ones((2, 2)), np.ones((2, 1))), {"a": MSE, "b": MSE})
    assert list(batch.specs) == ["a", "b"]


def test_a_columnar_batch_names_its_streams_once_each_in_order_of_arrival() -> None:
    streams = ["c", "a", "c", "b", "a"]
    specs = {s: MSE for s in dict.fromkeys(streams)}  # as the registry looks them up
    batch = build_columns(Columns(streams, np.ones((5, 2)), np.ones((5, 1))), specs)
    assert list(batch.streams) == list(dict.fromkeys(batch.stream_ids)) == ["c", "a", "b"]
