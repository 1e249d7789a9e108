"""What the service keeps about streams besides their learned state: records of resident streams, templates.

One object owns both tables and changes them only through its methods, so the registry and durability
(which restores and evicts streams, and loads templates from the store) share it without either one
reaching into the other's dictionaries.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable
from dataclasses import dataclass
from operator import attrgetter

from trackin.models.specs import StreamSpec

__all__ = ["Catalog", "StreamRecord", "Template"]


@dataclass(slots=True)
class StreamRecord:
    spec: StreamSpec
    created_at: float
    updated_at: float
    template: str | None = None
    last_drift_at: float | None = None
    drifts: int = 0
    series_time: tuple[bool, float] | None = None
    """A timed series' last time as its queued requests leave it (service/domain/series_times.py); None:
    not timed, or not known yet (a restored stream)."""


_SPEC = attrgetter("spec")


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    prefix: str
    spec: StreamSpec
    idle_seconds: float


class Catalog:
    """Records of the resident streams by id, and templates by name.

    A stream is resident when it has a record here; it may sit in the engine without one for a moment
    (being created, restored or evicted), never the other way round for longer than an engine call.
    """

    def __init__(self) -> None:
        self._records: dict[str, StreamRecord] = {}
        self._templated: dict[str, StreamRecord] = {}  # the records made from a template: what sweeps read
        self._templates: dict[str, Template] = {}

    # ----- records ----------------------------------------------------------------------------------------

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def missing(self, stream_ids: Iterable[str]) -> list[str]:
        """The ids without a record, each once, in order. When every one has a record (ingestion's usual
        case) that is one subset test in C, not a membership test in Python per stream."""
        distinct = dict.fromkeys(stream_ids)
        records = self._records
        if distinct.keys() <= records.keys():
            return []
        return [s for s in distinct if s not in records]

    def record(self, stream_id: str) -> StreamRecord | None:
        return self._records.get(stream_id)

    def specs_of(self, stream_ids: Iterable[str]) -> dict[str, StreamSpec] | None:
        """Each stream's spec, in order, if every one has a record (else None): one pass in C, for the
        thousand streams of a columnar body."""
        ids = list(stream_ids)
        try:
            return dict(zip(ids, map(_SPEC, map(self._records.__getitem__, ids)), strict=True))
        except (KeyError, TypeError):  # not catalogued (or not an id at all)
            return None

    def items(self) -> ItemsView[str, StreamRecord]:
        return self._records.items()

    def templated(self) -> list[tuple[str, StreamRecord]]:
        """The resident streams created from a template (the idle sweep's work: not every stream)."""
        return list(self._templated.items())

    def ids(self, prefix: str) -> list[str]:
        """Resident stream ids starting with ``prefix``, unordered."""
        return [s for s in self._records if s.startswith(prefix)]

    def add(self, stream_id: str, record: StreamRecord) -> None:
        """Record a stream just created (replacing any record of that id)."""
        self._records[stream_id] = record
        self._index(stream_id, record)

    def _index(self, stream_id: str, record: StreamRecord) -> None:
        if record.template:
            self._templated[stream_id] = record
        else:
            self._templated.pop(stream_id, None)

    def adopt(self, stream_id: str, record: StreamRecord) -> StreamRecord:
        """Record a restored stream unless it got a record meanwhile; the record in force."""
        kept = self._records.setdefault(stream_id, record)
        self._index(stream_id, kept)
        return kept

    def remove(self, stream_id: str) -> StreamRecord | None:
        """Forget a stream's record (deleted, or evicted from memory); the record it had."""
        self._templated.pop(stream_id, None)
        return self._records.pop(stream_id, None)

    # ----- templates --------------------------------------------------------------------------------------

    def template(self, name: str) -> Template | None:
        return self._templates.get(name)

    def templates(self) -> list[Template]:
        return list(self._templates.values())

    def put_template(self, template: Template) -> Template | None:
        """Add or replace a template; the one it replaced."""
        old = self._templates.get(template.name)
        self._templates[template.name] = template
        return old

    def remove_template(self, name: str) -> Template | None:
        return self._templates.pop(name, None)

    def load_templates(self, templates: Iterable[Template]) -> None:
        """Templates read from the store when it connects; each replaces one of the same name."""
        for template in templates:
            self._templates[template.name] = template

    def template_for(self, stream_id: str) -> Template | None:
        """The template whose prefix is the longest match for ``stream_id`` (ties: the greatest name)."""
        matches = [t for t in self._templates.values() if stream_id.startswith(t.prefix)]
        return max(matches, key=lambda t: (len(t.prefix), t.name)) if matches else None
