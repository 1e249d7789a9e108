"""What both backends do alike with what they store and read back, written once.

A SQLite row and a Redis hash hold the same checkpoint and record fields, so the rules for reading
them back (meta and records must be JSON objects, an unreadable checkpoint is `CorruptCheckpoint`,
a page is cut from ``limit + 1`` ids) live here rather than in each backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson

from trackin.service.store.errors import CorruptCheckpoint

__all__ = ["decoding_checkpoint", "dumps_record", "loads_object", "split_page"]


def dumps_record(value: dict[str, Any]) -> bytes:
    """A record value as JSON, or ``ValueError``: records are objects so they can grow new fields."""
    if not isinstance(value, dict):
        raise ValueError(f"Invalid record value: expected dict, got {type(value).__name__}")
    return orjson.dumps(value)


def loads_object(text: str | bytes, what: str = "stored JSON") -> dict[str, Any]:
    """Parse stored JSON that must be an object; ``ValueError`` (naming ``what``) otherwise."""
    value = orjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


@contextlib.contextmanager
def decoding_checkpoint(stream_id: str) -> Iterator[None]:
    """Turn a parse failure inside the block into `CorruptCheckpoint`, so the caller learns which stream."""
    try:
        yield
    except (ValueError, TypeError) as exc:  # orjson, int() and Checkpoint validation errors
        raise CorruptCheckpoint(stream_id, f"unreadable record: {exc}") from exc


def split_page(ids: list[str], limit: int) -> tuple[list[str], str | None]:
    """Cut a `Store.list_streams` page from up to ``limit + 1`` sorted ids: the extra one says more exist."""
    if len(ids) > limit:
        return ids[:limit], ids[limit - 1]
    return ids, None
