"""Stream ids: a small, safe alphabet so ids can be used verbatim in URLs, store keys and metric labels."""

from __future__ import annotations

import re

from trackin.service.errors import InvalidStreamId

__all__ = ["MAX_ID_LENGTH", "check_stream_id"]

MAX_ID_LENGTH = 128
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DOT_SEGMENTS = frozenset({".", ".."})


def check_stream_id(value: object, field: str = "stream_id") -> str:
    """Return ``value`` if it is a valid stream id, else raise ``InvalidStreamId`` naming ``field``."""
    # "." and ".." are URL dot-segments: a client resolving /v1/streams/.. would reach another resource
    if not isinstance(value, str) or not _ID.fullmatch(value) or value in _DOT_SEGMENTS:
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise InvalidStreamId(
            f"invalid stream id {shown!r}: 1 to {MAX_ID_LENGTH} characters from A-Z a-z 0-9 . _ : -,"
            " and not . or ..",
            field=field,
        )
    return value
