"""What both backends do alike with what they store and read back, written once.

A SQLite row and a Redis hash hold the same checkpoint and record fields, so the rules for reading
them back (meta and records must be JSON objects, an unreadable checkpoint is `CorruptCheckpoint`,
a page is cut from ``limit + 1`` ids) live here rather than in each backend.
"""

from __future__ import annotations

from typing import Any

import orjson

from trackin.service.store.base import Checkpoint
from trackin.service.store.errors import CorruptCheckpoint

__all__ = ["dumps_record", "loads_object", "split_page", "stored_checkpoint"]


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


def stored_checkpoint(
    stream_id: str,
    epoch: int | bytes,
    step: int | bytes,
    log_position: str,
    meta: str | bytes,
    tensors: bytes,
) -> Checkpoint:
    """A checkpoint as read back, its meta parsed; a field that does not parse or check is
    `CorruptCheckpoint` naming the stream. (A plain ``try``: an eager restore reads a hundred thousand of
    these, and a context manager per row cost a fifth of the reading.)"""
    try:
        meta_value = loads_object(meta, "meta")
        return Checkpoint(stream_id, int(epoch), int(step), log_position, meta_value, bytes(tensors))
    except (ValueError, TypeError) as exc:  # orjson, int() and Checkpoint validation errors
        raise CorruptCheckpoint(stream_id, f"unreadable record: {exc}") from exc


def split_page(ids: list[str], limit: int) -> tuple[list[str], str | None]:
    """Cut a `Store.list_streams` page from up to ``limit + 1`` sorted ids: the extra one says more exist."""
    if len(ids) > limit:
        return ids[:limit], ids[limit - 1]
    return ids, None
