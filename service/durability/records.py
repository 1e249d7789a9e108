"""The registry's records as durability sees them: the interface it changes them through, and their
stored form (a checkpoint's meta, a template record), each encoder beside its decoder."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from trackin.models.specs import StreamSpec
from trackin.service.domain.catalog import StreamRecord, Template

__all__ = [
    "COUNT_KEY",
    "TEMPLATE_KIND",
    "Records",
    "record_from_meta",
    "record_meta",
    "template_from_value",
    "template_value",
]

TEMPLATE_KIND = "template"
"""The store's record kind for templates."""
COUNT_KEY = "observations"
"""Checkpoint meta: observations the stream had applied (the fencing step) when it was written."""


class Records(Protocol):
    """What durability reads and changes of the resident streams' records and the templates
    (`trackin.service.domain.catalog.Catalog` implements it)."""

    def __contains__(self, stream_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def missing(self, stream_ids: Iterable[str]) -> list[str]: ...
    def record(self, stream_id: str) -> StreamRecord | None: ...
    def adopt(self, stream_id: str, record: StreamRecord) -> StreamRecord: ...
    def remove(self, stream_id: str) -> StreamRecord | None: ...
    def load_templates(self, templates: Iterable[Template]) -> None: ...


def record_meta(record: StreamRecord, count: int, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's meta for a stream with ``count`` observations applied (JSON-able); ``spec``: the
    record's spec dumped already (streams share specs, so a pass dumps each once)."""
    return {
        "spec": record.spec.model_dump(mode="json") if spec is None else spec,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "template": record.template,
        "last_drift_at": record.last_drift_at,
        "drifts": record.drifts,
        COUNT_KEY: count,
    }


def record_from_meta(spec: StreamSpec, meta: dict[str, Any]) -> StreamRecord:
    """The record a checkpoint's meta describes (times default to now in meta written before they were)."""
    return StreamRecord(
        spec=spec,
        created_at=float(meta.get("created_at", time.time())),
        updated_at=float(meta.get("updated_at", time.time())),
        template=meta.get("template"),
        last_drift_at=meta.get("last_drift_at"),
        drifts=int(meta.get("drifts", 0)),
    )


def template_value(template: Template) -> dict[str, Any]:
    """A template as the store's JSON record (its name is the record's name)."""
    return {
        "prefix": template.prefix,
        "spec": template.spec.model_dump(mode="json"),
        "idle_seconds": template.idle_seconds,
    }


def template_from_value(name: str, value: dict[str, Any]) -> Template:
    return Template(
        name=name,
        prefix=value["prefix"],
        spec=StreamSpec.model_validate(value["spec"]),
        idle_seconds=value["idle_seconds"],
    )
