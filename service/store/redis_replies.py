"""Reading Redis replies back into the store's types.

The client never decodes (payloads and tensors are bytes), so every reply passes through here and a
reply of an unexpected type is a `StoreError` rather than a crash somewhere downstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trackin.service.store.base import Checkpoint
from trackin.service.store.errors import CorruptCheckpoint, StoreError
from trackin.service.store.rows import stored_checkpoint

__all__ = ["CHECKPOINT_FIELDS", "checkpoint_from_fields", "log_entries", "reply_bytes", "reply_text"]

CHECKPOINT_FIELDS = ("epoch", "step", "log_position", "meta", "tensors", "deleted")
"""The checkpoint hash fields `checkpoint_from_fields` takes, in its order (HMGET)."""

_PAYLOAD_FIELD = b"p"  # the one field of a log entry, as the append script writes it


def reply_bytes(reply: object) -> bytes:
    """A reply that must be bytes (the client never decodes); anything else is a protocol surprise."""
    if not isinstance(reply, bytes):
        raise StoreError(f"unexpected Redis reply {reply!r}")
    return reply


def reply_text(reply: object) -> str:
    return reply_bytes(reply).decode()


def checkpoint_from_fields(stream_id: str, fields: list[bytes | None]) -> Checkpoint | None:
    """The checkpoint in an HMGET of `CHECKPOINT_FIELDS`; None for no hash or a tombstone."""
    epoch, step, log_position, meta, tensors, deleted = fields
    if epoch is None or deleted == b"1":
        return None
    if step is None or log_position is None or meta is None or tensors is None:
        raise CorruptCheckpoint(stream_id, "checkpoint hash is missing fields")
    return stored_checkpoint(stream_id, epoch, step, log_position.decode(), meta, tensors)


def log_entries(page: Sequence[tuple[object, Mapping[Any, object] | None]] | None) -> list[tuple[str, bytes]]:
    """``(position, payload)`` pairs of one XRANGE reply (None reads as no entries)."""
    return [(reply_text(pos), reply_bytes((fields or {})[_PAYLOAD_FIELD])) for pos, fields in page or []]
