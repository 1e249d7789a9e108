"""Catalog.missing: the ids a batch names that have no record, each once, in the order named."""

from __future__ import annotations

import time

from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import Catalog, StreamRecord


def test_missing_names_each_uncatalogued_id_once_in_order() -> None:
    catalog = Catalog()
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    for stream_id in ("a", "b"):
        catalog.adopt(stream_id, StreamRecord(spec, time.time(), time.time()))
    assert catalog.missing(["a", "b", "a"]) == []
    assert catalog.missing(iter(["c", "a", "d", "c", "b", "d"])) == ["c", "d"]
    assert catalog.missing([]) == []
